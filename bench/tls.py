"""HTTPS hits of the edge against nginx with the same certificate: HTTP/1.1, h2, handshakes.

Not a test: prints a Markdown table. Run from the repository root:

    .venv/bin/python bench/tls.py [--rounds 3] [--duration 5]

All on 127.0.0.1: a throwaway CA and certificate (trustme) for www.bench.test (and
127.0.0.1, the SNI wrk and h2load send), the demo origin, one edge process (one
worker, access log off) with `tls_listen`, and nginx (one worker) serving the same
bodies as static files over TLS with http2 on, the same certificate. Each round runs,
interleaved: wrk (HTTP/1.1 keep-alive, 1 KiB and 100 KiB hits), h2load (h2, 1 KiB,
10 streams per connection) and wrk with `Connection: close` (a new TLS handshake per
request). Prints the medians and the edge/nginx ratios. Every process it starts it stops.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme

REPO = Path(__file__).resolve().parent.parent
HOST = "www.bench.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


def https_get(port: int, path: str, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as sock,
    ):
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def wrk(port: int, path: str, duration: float, close: bool = False) -> float:
    argv = ["wrk", "-t2", "-c32", f"-d{duration:g}s", "-H", f"Host: {HOST}"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(
        [*argv, f"https://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def h2load(port: int, path: str, duration: float, size: int) -> float:
    # the URI's host is the SNI and :authority; --connect-to says where to connect
    argv = ["h2load", "-c32", "-m10", "-t2", f"-D{duration:g}", f"--connect-to=127.0.0.1:{port}"]
    out = subprocess.run(
        [*argv, f"https://{HOST}:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    assert match, out
    # with -D, streams still open when time is up count as failed: only 4xx/5xx matter
    codes = re.search(r"status codes: (\d+) 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert codes and int(codes.group(1)) > 0 and codes.group(2) == codes.group(3) == "0", out
    # every answer whole: the DATA bytes received cover each finished answer's body
    # (with -D, a stream cut by the deadline has its head and part of its body)
    data = re.search(r"\((\d+)\) data", out)
    done = re.search(r"(\d+) succeeded", out)
    assert data and done and int(data.group(1)) >= int(done.group(1)) * size, out
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--cases", default="", help="only cases whose name holds one of these (comma-separated)"
    )
    args = parser.parse_args()
    for exe in ("nginx", "wrk", "h2load"):
        if not shutil.which(exe):
            print(f"{exe} is needed (Debian: nginx-light, wrk, nghttp2-client)", file=sys.stderr)
            return 2
    root = Path(tempfile.mkdtemp(prefix="edgeshield-tls-bench-"))
    root.chmod(0o755)  # nginx's workers may run as another user
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "127.0.0.1")
    cert_path, key_path, ca_path = root / "bench.crt", root / "bench.key", root / "ca.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_path.write_bytes(cert.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_path))
    origin_port, edge_port, tls_port, admin_port, nginx_port = (free_port() for _ in range(5))
    (root / "fleet.toml").write_text(
        f'[[regions]]\nname = "eu"\nlatitude = 50.1\nlongitude = 8.7\n\n'
        f'[[services]]\nname = "bench"\nhosts = ["{HOST}"]\n'
        f'origins = ["http://127.0.0.1:{origin_port}"]\n'
        f'tls_cert = "{cert_path}"\ntls_key = "{key_path}"\n\n'
        f'[[edges]]\nname = "edge1"\nregion = "eu"\nlisten = "127.0.0.1:{edge_port}"\n'
        f'admin_listen = "127.0.0.1:{admin_port}"\ncache_dir = "{root / "cache"}"\n'
        f'cache_size = "1GiB"\ntls_listen = "127.0.0.1:{tls_port}"\n'
        # one process, as nginx's one worker (the default, "auto", is one per core)
        "workers = 1\n"
    )
    static = root / "static"
    for size, name in ((1024, "1k"), (100 * 1024, "100k")):
        (static / "bin").mkdir(parents=True, exist_ok=True)
        (static / "bin" / name).write_bytes(os.urandom(size))
    (root / "nginx.conf").write_text(
        f"worker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/nginx.err;\n"
        "events { worker_connections 4096; }\n"
        # keepalive_requests: nginx ends a connection after 1000 requests by default,
        # which h2load does not reconnect after
        f"http {{ access_log off; keepalive_requests 100000000;\n"
        f" client_body_temp_path {root}/nb; proxy_temp_path {root}/np;\n"
        f" fastcgi_temp_path {root}/nf; uwsgi_temp_path {root}/nu; scgi_temp_path {root}/ns;\n"
        f" server {{ listen 127.0.0.1:{nginx_port} ssl http2; server_name {HOST};\n"
        f"  ssl_certificate {cert_path}; ssl_certificate_key {key_path};\n"
        f"  root {static}; }} }}\n"
    )
    env = {**os.environ, "EDGESHIELD_NODE_SECRET": "bench", "EDGESHIELD_ACCESS_LOG": "0"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "demo.origin",
                "--listen",
                f"127.0.0.1:{origin_port}",
                "--quiet",
            ],
            cwd=REPO,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "edge",
                "--config",
                str(root / "fleet.toml"),
                "--node",
                "edge1",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        ),
        subprocess.Popen(
            ["nginx", "-c", str(root / "nginx.conf"), "-g", "daemon off;"], start_new_session=True
        ),
    ]
    try:
        for port in (origin_port, tls_port, nginx_port):
            wait_port(port)
        for path in ("/bin/1k", "/bin/100k"):
            for _ in range(3):
                reply = https_get(tls_port, path, ca_path)
            assert b"hit" in reply.split(b"\r\n\r\n")[0].lower(), reply[:400]
        results: dict[str, list[tuple[float, float]]] = {}
        cases = [
            ("HTTP/1.1 1 KiB (wrk)", lambda p: wrk(p, "/bin/1k", args.duration)),
            ("HTTP/1.1 100 KiB (wrk)", lambda p: wrk(p, "/bin/100k", args.duration)),
            ("h2 1 KiB (h2load)", lambda p: h2load(p, "/bin/1k", args.duration, 1024)),
            ("h2 100 KiB (h2load)", lambda p: h2load(p, "/bin/100k", args.duration, 100 * 1024)),
            (
                "new handshakes/s (wrk, Connection: close)",
                lambda p: wrk(p, "/bin/1k", args.duration, close=True),
            ),
        ]
        wanted = [word.strip() for word in args.cases.split(",") if word.strip()]
        if wanted:
            cases = [case for case in cases if any(word in case[0] for word in wanted)]
        for _ in range(args.rounds):
            for name, run in cases:
                results.setdefault(name, []).append((run(tls_port), run(nginx_port)))
        print("| case | edge req/s | nginx req/s | edge/nginx |")
        print("|---|---:|---:|---:|")
        for name, pairs in results.items():
            edge = statistics.median(p[0] for p in pairs)
            nginx = statistics.median(p[1] for p in pairs)
            ratio = statistics.median(p[0] / p[1] for p in pairs)
            print(f"| {name} | {edge:,.0f} | {nginx:,.0f} | {ratio:.2f}x |")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
