"""Cache-hit throughput of the edge against nginx proxy_cache, and edge RSS under 1 GiB.

Not a test: it prints a Markdown table (and with `--write FILE` also records it with
the command, the date and notes). Run from the repository root:

    .venv/bin/python bench/hits.py [--rounds 3] [--duration 10] [--write FILE]
                                   [--mode all|hits|rss] [--workers 2]
                                   [--front httptools|aiohttp] [--access-log on|off]

What it does, all on 127.0.0.1:
- installs Debian's `nginx-light` and `wrk` with apt-get when missing, and tries the
  nginx brotli filter module (without it, the br row compares against nginx's gzip);
- starts the demo origin (`python -m demo.origin`, serving `demo/sized.py`'s objects),
  the edge as a real process (`python -m cli.main edge`, one worker per core, no
  shields) and nginx proxy_cache (one worker per core, gzip level 6 and br level 4 on
  the fly) in front of it;
- warms both and checks every benchmarked URL is a hit on both;
- runs `wrk -t2 -c64 -dNs --latency` against each in turn, interleaved, N rounds,
  and prints medians and the edge/nginx ratio;
- rss mode: streams a 1 GiB object through the edge (a miss, then a hit), the client
  reading and discarding, sampling VmRSS of every edge process every 100 ms; then
  holds 5,000 idle keep-alive connections open on the edge and samples it again.

The edge runs its default configuration unless told otherwise: the httptools front
(`--front aiohttp` for aiohttp's server), the access log on (`--access-log off`), and
with `--workers 0` no `workers` key (one per core).

Every process it starts it stops (process groups, try/finally and atexit).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import http.client
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
HOST = "www.bench.test"
BROTLI_MODULE = "/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so"
BROTLI_PACKAGE = "libnginx-mod-http-brotli-filter"
GIB = 1024**3
WARM_TRIES = 80
WARM_STREAK = 12


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One benchmarked request: a path and the encoding the client asks for."""

    name: str
    label: str
    path: str
    encoding: str | None = None


CASES = {
    c.name: c
    for c in (
        Case("id-1k", "1 KiB, identity", "/bin/1k"),
        Case("id-100k", "100 KiB, identity", "/bin/100k"),
        Case("id-1m", "1 MiB, identity", "/bin/1m"),
        # the smallest size the store does not read whole into memory (above 256 KiB)
        Case("id-300k", "300 KiB, identity", "/bin/300k"),
        Case("br-100k", "100 KiB JSON, br", "/json/100k", "br"),
        Case("gzip-100k", "100 KiB JSON, gzip", "/json/100k", "gzip"),
        Case("br-1k", "1 KiB JSON, br", "/json/1k", "br"),
        Case("json-1k", "1 KiB JSON, identity", "/json/1k"),
    )
}
DEFAULT_CASES = ("id-1k", "id-100k", "id-1m", "br-100k")


# --------------------------------------------------------------------------- processes


#: wrk's Lua prelude for random URLs: each thread numbered (`tid`) and its random
#: numbers seeded apart (seeded alike, two threads ask for the same URLs in step, and
#: every second request is for an object just read)
THREAD_SEEDS_LUA = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  math.randomseed(os.time() * 1000 + tid)
end
"""


class Processes:
    """Every child the benchmark starts, each in its own process group, stopped at exit."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        atexit.register(self.stop_all)

    def start(
        self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in a new session (so its forks go with it), output to `log`."""
        with open(log, "wb") as out:
            child = subprocess.Popen(
                list(argv),
                cwd=REPO,
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes]) -> None:
        """SIGTERM the child's process group, SIGKILL it after 10 s."""
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        # forked workers may outlive a parent that exited on its own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        """Stop every child still known, newest first."""
        for child in reversed(list(self.children)):
            self.stop(child)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, child: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until 127.0.0.1:port accepts; fail with the log if the child exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"exited with {child.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout} s:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class Reply:
    """Status, headers (lower-case names) and body length of one response."""

    status: int
    headers: dict[str, str]
    length: int


def listeners_on(port: int) -> int:
    """Listening TCP sockets on `port` (one per edge worker, SO_REUSEPORT), from /proc."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # local address "ADDR:PORT" in hex; state 0A is LISTEN
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def wait_all_listening(
    port: int, count: int, child: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Wait until `count` sockets listen on `port` (every worker of the edge)."""
    deadline = time.monotonic() + timeout
    while listeners_on(port) < count:
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{listeners_on(port)} of {count} workers listening on {port}:\n"
                + log.read_text(errors="replace")[-2000:]
            )
        time.sleep(0.1)


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> Reply:
    """One GET on a new connection; the body is read and counted, not kept."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": HOST, **(headers or {})})
        response = conn.getresponse()
        length = 0
        while chunk := response.read(1 << 20):
            length += len(chunk)
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, length)
    finally:
        conn.close()


def run_quiet(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, output captured."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


# --------------------------------------------------------------------------- tools


def ensure_tools(notes: list[str]) -> bool:
    """nginx-light and wrk installed (apt-get when missing); True if nginx has br."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    missing = [pkg for pkg, exe in (("nginx-light", "nginx"), ("wrk", "wrk")) if not _which(exe)]
    want_br = not os.path.exists(BROTLI_MODULE)
    if missing or want_br:
        print("apt-get update", file=sys.stderr)
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, check=False)
    if missing:
        print(f"installing {' '.join(missing)}", file=sys.stderr)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-q", *missing], env=env, check=True)
        _stop_packaged_nginx(sudo, notes)
    if want_br:
        result = subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", BROTLI_PACKAGE], env=env, check=False
        )
        if result.returncode != 0:
            notes.append(f"`{BROTLI_PACKAGE}` did not install.")
        _stop_packaged_nginx(sudo, notes)
    for exe in ("nginx", "wrk"):
        if not _which(exe):
            raise SystemExit(f"{exe} is not installed and apt-get could not install it")
    if not os.path.exists(BROTLI_MODULE):
        notes.append(
            "nginx has no brotli module here: the br row compares the edge's br hits "
            "with nginx compressing gzip (level 6) on the fly."
        )
        return False
    return True


def _which(exe: str) -> str | None:
    return shutil.which(exe) or shutil.which(exe, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _stop_packaged_nginx(sudo: list[str], notes: list[str]) -> None:
    """Debian's package starts nginx on port 80 where it can; the benchmark stops it."""
    pid_file = Path("/run/nginx.pid")
    if pid_file.exists():
        subprocess.run([*sudo, _which("nginx") or "nginx", "-s", "stop"], check=False)
        notes.append("The packaged nginx service that apt-get started was stopped.")


# --------------------------------------------------------------------------- servers


def nginx_head(prefix: Path, workers: int, load: str = "", access_log: bool = False) -> str:
    """The start of a benchmark nginx.conf under `prefix` (with `logs/` and `temp/`):
    the main context and the opening of `http {` with what every benchmark server
    shares (sendfile, long keep-alive; no access log unless `access_log`, then
    nginx's default: the combined format to `logs/access.log`); the caller adds the
    rest of the http block and closes it."""
    user = "user root root;" if os.geteuid() == 0 else ""  # else workers drop to nobody
    temp = prefix / "temp"
    logging = f"access_log {prefix}/logs/access.log;" if access_log else "access_log off;"
    return f"""
{load}
{user}
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    {logging}
    sendfile on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {temp}/client;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;"""


@dataclass
class Servers:
    """The origin, the edge and nginx of one benchmark run, and what they were."""

    tmp: Path
    procs: Processes
    notes: list[str]
    origin_port: int = 0
    edge_port: int = 0
    edge_admin_port: int = 0
    nginx_port: int = 0
    nginx_compress_port: int = 0
    edge: subprocess.Popen[bytes] | None = None
    nginx: subprocess.Popen[bytes] | None = None
    edge_workers: int = 0
    nginx_br: bool = False
    edge_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    front: str = "httptools"
    access_log: bool = True
    #: whether nginx proxy_cache writes its access log (nginx's default) or not
    nginx_access_log: bool = False
    #: how the edge sends bodies from their files: sendfile (the default) or chunks
    file_bodies: str = "sendfile"
    #: the most VmRSS (KiB, all edge processes summed) seen during each case's runs
    hit_rss: dict[str, int] = field(default_factory=dict)

    def start_origin(self) -> None:
        """The demo origin, whose sized objects (`demo/sized.py`) the cases fetch."""
        self.origin_port = free_port()
        log = self.tmp / "origin.log"
        argv = [sys.executable, "-m", "demo.origin", "--quiet"]
        child = self.procs.start([*argv, "--listen", f"127.0.0.1:{self.origin_port}"], log)
        wait_listening(self.origin_port, child, log, 20)

    def start_edge(self, workers: int) -> None:
        """The edge as `python -m cli.main edge`; falls back to 1 worker if N fails."""
        for attempt in (workers, 1) if workers > 1 else (workers,):
            try:
                self._start_edge(attempt)
                self.edge_workers = attempt
                return
            except RuntimeError as exc:
                if attempt <= 1:
                    raise
                self.notes.append(
                    f"The edge did not start with `workers = {attempt}`; measured with "
                    f"`workers = 1`. Its error: {str(exc).strip().splitlines()[-1]}"
                )
                print(f"edge with workers={attempt} failed:\n{exc}", file=sys.stderr)

    def _start_edge(self, workers: int) -> None:
        self.edge_port, self.edge_admin_port = free_port(), free_port()
        cache_dir = self.tmp / f"edge-cache-{workers}"
        fleet = self.tmp / f"fleet-{workers}.toml"
        fleet.write_text(
            "\n".join(
                [
                    "[[regions]]",
                    'name = "local"',
                    "latitude = 0.0",
                    "longitude = 0.0",
                    "",
                    "[[services]]",
                    'name = "bench"',
                    f'hosts = ["{HOST}"]',
                    f'origins = ["http://127.0.0.1:{self.origin_port}"]',
                    "",
                    "[[edges]]",
                    'name = "edge1"',
                    'region = "local"',
                    f'listen = "127.0.0.1:{self.edge_port}"',
                    f'admin_listen = "127.0.0.1:{self.edge_admin_port}"',
                    f'cache_dir = "{cache_dir}"',
                    'cache_size = "4GiB"',
                    # room for the 5,000 idle connections of the rss mode
                    "max_connections = 10000",
                    f"workers = {workers}" if workers else "",
                    f'front = "{self.front}"',
                    "",
                ]
            ),
            encoding="utf-8",
        )
        log = self.tmp / f"edge-{workers}.log"
        env = {
            "EDGESHIELD_NODE_SECRET": self.edge_secret,
            "EDGESHIELD_ACCESS_LOG": "1" if self.access_log else "0",
            "EDGESHIELD_FILE_BODIES": self.file_bodies,
        }
        argv = [sys.executable, "-m", "cli.main", "edge", "--config", str(fleet)]
        child = self.procs.start([*argv, "--node", "edge1"], log, env)
        try:
            wait_listening(self.edge_port, child, log, 30)
            wait_listening(self.edge_admin_port, child, log, 30)
            # worker 0 listens first; the others start after it (a fresh interpreter
            # each, slow under load): a run begun before they listen puts every
            # keep-alive connection on worker 0 for its whole length
            wait_all_listening(self.edge_port, workers or os.cpu_count() or 1, child, log, 60)
            reply = http_get(self.edge_port, "/bin/1k")
            if reply.status != 200:
                raise RuntimeError(f"edge answered {reply.status} to a first request")
        except BaseException:
            self.procs.stop(child)
            raise
        self.edge = child

    def start_nginx(self, workers: int, brotli: bool) -> None:
        """nginx proxy_cache with a temp prefix, in the foreground, as the current user."""
        self.nginx_port, self.nginx_compress_port = free_port(), free_port()
        prefix = self.tmp / "nginx"
        for sub in ("cache", "temp", "logs"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(self._nginx_conf(prefix, workers, brotli), encoding="utf-8")
        log = self.tmp / "nginx.log"
        nginx = _which("nginx") or "nginx"
        argv = [nginx, "-p", str(prefix), "-e", str(prefix / "logs" / "error.log")]
        child = self.procs.start([*argv, "-c", str(conf), "-g", "daemon off;"], log)
        wait_listening(self.nginx_port, child, log, 20)
        wait_listening(self.nginx_compress_port, child, log, 20)
        self.nginx = child
        self.nginx_br = brotli

    def _nginx_conf(self, prefix: Path, workers: int, brotli: bool) -> str:
        load = f"load_module {BROTLI_MODULE};" if brotli else ""
        br = (
            "brotli on; brotli_comp_level 4; brotli_min_length 256;"
            " brotli_types application/json text/plain;"
            if brotli
            else ""
        )
        location = (
            "proxy_pass http://origin; proxy_http_version 1.1; "
            'proxy_set_header Connection ""; proxy_set_header Host $host; '
            "proxy_cache bench; add_header X-Cache-Status $upstream_cache_status;"
        )
        return f"""{nginx_head(prefix, workers, load, self.nginx_access_log)}
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=bench:32m max_size=4g
                     inactive=1h use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{self.origin_port}; keepalive 16; }}
    proxy_cache_lock on;
    # identity rows: a server with no compression filter in the way
    server {{
        listen 127.0.0.1:{self.nginx_port};
        server_name {HOST};
        location / {{ {location} }}
    }}
    # compressed rows: the same cache, compressed on the fly on every hit
    server {{
        listen 127.0.0.1:{self.nginx_compress_port};
        server_name {HOST};
        gzip on; gzip_comp_level 6; gzip_min_length 256; gzip_proxied any; gzip_vary on;
        gzip_types application/json text/plain;
        {br}
        location / {{ {location} }}
    }}
}}
"""

    def edge_pids(self) -> list[int]:
        """The edge's processes: the parent and every descendant."""
        if self.edge is None:
            return []
        pids, queue = [], [self.edge.pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    queue += [int(p) for p in task.read_text().split()]
        return pids


# --------------------------------------------------------------------------- warming


def accept_encoding(case: Case, server: str, nginx_br: bool) -> str | None:
    """What the client asks for: nginx without br gets gzip for the br case."""
    if case.encoding == "br" and server == "nginx" and not nginx_br:
        return "gzip"
    return case.encoding


def targets(servers: Servers, case: Case) -> list[tuple[str, int]]:
    """(server, port) pairs for a case: nginx's compressing server for encoded cases."""
    nginx = servers.nginx_compress_port if case.encoding else servers.nginx_port
    return [("edge", servers.edge_port), ("nginx", nginx)]


def warm(servers: Servers, cases: Sequence[Case]) -> None:
    """Fill both caches and check every case is a whole hit with the encoding it asks for.

    Each request is a new connection, so with SO_REUSEPORT every edge worker gets
    several and fills its memory tier. The last `WARM_STREAK` answers must all be
    whole hits; broken answers on the way (a body cut short) are counted in the notes.
    """
    for case in cases:
        for server, port in targets(servers, case):
            encoding = accept_encoding(case, server, servers.nginx_br)
            headers = {"Accept-Encoding": encoding} if encoding else {}
            streak, broken, last = 0, 0, ""
            for _ in range(WARM_TRIES):
                try:
                    reply = http_get(port, case.path, headers)
                except (OSError, http.client.HTTPException) as exc:
                    streak, broken, last = 0, broken + 1, f"{type(exc).__name__}: {exc}"
                    continue
                whole = reply.status == 200 and reply.length == int(
                    reply.headers.get("content-length", reply.length)
                )
                hit = (
                    "hit" in reply.headers.get("cache-status", "")
                    if server == "edge"
                    else reply.headers.get("x-cache-status") == "HIT"
                )
                got = reply.headers.get("content-encoding", "identity")
                if not whole:
                    broken += 1
                if whole and hit and got == (encoding or "identity"):
                    streak += 1
                    if streak == WARM_STREAK:
                        break
                else:
                    streak, last = 0, f"{reply}"
                    time.sleep(0.1)  # a compressed variant may still be in the making
            if broken:
                servers.notes.append(
                    f"Warming {server} `{case.path}`: {broken} answer(s) with a body cut short "
                    f"or a failed connection (last: {last[:160]})."
                )
            if streak < WARM_STREAK:
                raise RuntimeError(f"{server} {case.path}: no steady hits after warming: {last}")


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def run_wrk(port: int, case: Case, encoding: str | None, duration: float) -> WrkResult:
    """`wrk -t2 -c64 -dNs --latency` against one URL; parses req/s and percentiles."""
    argv = ["wrk", "-t2", "-c64", f"-d{duration:g}s", "--latency", "-H", f"Host: {HOST}"]
    if encoding:
        argv += ["-H", f"Accept-Encoding: {encoding}"]
    result = run_quiet([*argv, f"http://127.0.0.1:{port}{case.path}"])
    out = result.stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if result.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed:\n{out}\n{result.stderr}")

    def percentile(p: str) -> float:
        found = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(found.group(1)) * _UNIT_MS[found.group(2)] if found else float("nan")

    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return WrkResult(float(match.group(1)), percentile("50"), percentile("99"), errors)


def bench_hits(
    servers: Servers, cases: Sequence[Case], rounds: int, duration: float
) -> dict[tuple[str, str], list[WrkResult]]:
    """Interleaved rounds: each case, edge and nginx in turn (order alternating)."""
    results: dict[tuple[str, str], list[WrkResult]] = {}
    for case in cases:  # a short run each first, so neither starts cold
        for server, port in targets(servers, case):
            run_wrk(port, case, accept_encoding(case, server, servers.nginx_br), 1)
    for number in range(rounds):
        for case in cases:
            pairs = targets(servers, case)
            order = pairs if number % 2 == 0 else pairs[::-1]
            for server, port in order:
                encoding = accept_encoding(case, server, servers.nginx_br)
                if server == "edge":
                    with RssSampler(servers.edge_pids) as sampler:
                        result = run_wrk(port, case, encoding, duration)
                    servers.hit_rss[case.name] = max(
                        servers.hit_rss.get(case.name, 0), sampler.max_total_kib
                    )
                else:
                    result = run_wrk(port, case, encoding, duration)
                results.setdefault((case.name, server), []).append(result)
                print(
                    f"round {number + 1} {case.label:22} {server:5} {result.rps:10,.0f} req/s "
                    f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms"
                    + (f" errors {result.errors}" if result.errors else ""),
                    file=sys.stderr,
                )
    return results


def hits_table(
    servers: Servers, cases: Sequence[Case], results: dict[tuple[str, str], list[WrkResult]]
) -> str:
    """The Markdown table of medians and ratios."""
    lines = [
        "| hit | edge req/s | nginx req/s | edge/nginx | per-round ratios "
        "| edge p50 / p99 ms | nginx p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        edge, nginx = results[(case.name, "edge")], results[(case.name, "nginx")]
        edge_rps = statistics.median(r.rps for r in edge)
        nginx_rps = statistics.median(r.rps for r in nginx)
        ratios = [e.rps / n.rps for e, n in zip(edge, nginx, strict=True)]
        label = case.label
        nginx_enc = accept_encoding(case, "nginx", servers.nginx_br)
        if case.encoding and nginx_enc != case.encoding:
            label += f" (nginx: {nginx_enc})"
        errors = sum(r.errors for r in edge + nginx)
        lines.append(
            f"| {label} | {edge_rps:,.0f} | {nginx_rps:,.0f} | **{edge_rps / nginx_rps:.2f}** "
            f"| {min(ratios):.2f}-{max(ratios):.2f} "
            f"| {_median(edge, 'p50_ms'):.2f} / {_median(edge, 'p99_ms'):.2f} "
            f"| {_median(nginx, 'p50_ms'):.2f} / {_median(nginx, 'p99_ms'):.2f} |"
        )
        if errors:
            servers.notes.append(
                f"{case.label}: wrk counted {errors} error(s) (non-2xx/3xx or socket errors, "
                "timeouts included) over all rounds of both servers."
            )
    return "\n".join(lines)


def hit_rss_table(servers: Servers, cases: Sequence[Case]) -> str:
    """The edge's resident memory during the hit runs (all its processes summed, sampled
    every 100 ms): whether many clients of large bodies make it grow."""
    lines = ["| hit | edge max RSS during its runs, sum of processes (MiB) |", "|---|---|"]
    for case in cases:
        if case.name in servers.hit_rss:
            lines.append(f"| {case.label} | **{servers.hit_rss[case.name] / 1024:.0f}** |")
    return "\n".join(lines)


def _median(results: list[WrkResult], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in results)


# --------------------------------------------------------------------------- rss


def vm_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else 0


@dataclass
class RssSampler:
    """Samples VmRSS of the edge's processes every 100 ms in a thread."""

    pids: Callable[[], list[int]]
    max_total_kib: int = 0
    max_single_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> int:
        """One sample: the sum over processes; updates the maxima."""
        values = [vm_rss_kib(pid) for pid in self.pids()]
        total = sum(values)
        self.max_total_kib = max(self.max_total_kib, total)
        self.max_single_kib = max([self.max_single_kib, *values])
        return total

    def __enter__(self) -> RssSampler:
        def loop() -> None:
            while not self._stop.wait(0.1):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def bench_rss(servers: Servers) -> str:
    """Stream 1 GiB through the edge twice (miss, then hit); the RSS table."""
    path = "/stream/1g"
    rows = [
        "| 1 GiB pass | Cache-Status | MiB/s | edge RSS before (MiB) "
        "| max RSS, sum of processes (MiB) | max RSS, one process (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for label in ("first (miss, filling)", "second (hit)"):
        before = RssSampler(servers.edge_pids).sample()
        with RssSampler(servers.edge_pids) as sampler:
            start = time.monotonic()
            reply = http_get(servers.edge_port, path)
            elapsed = time.monotonic() - start
        if reply.status != 200 or reply.length != GIB:
            raise RuntimeError(f"1 GiB pass: status {reply.status}, {reply.length} bytes")
        status = reply.headers.get("cache-status", "").split(";", 1)[-1].strip()
        rows.append(
            f"| {label} | `{status}` | {GIB / 2**20 / elapsed:,.0f} | {before / 1024:.0f} "
            f"| **{sampler.max_total_kib / 1024:.0f}** | {sampler.max_single_kib / 1024:.0f} |"
        )
        print(rows[-1], file=sys.stderr)
        time.sleep(1.0)  # let the fill commit before the hit
    rows.append(idle_connections_row(servers, IDLE_CONNECTIONS))
    print(rows[-1], file=sys.stderr)
    return "\n".join(rows)


IDLE_CONNECTIONS = 5000


def idle_connections_row(servers: Servers, count: int) -> str:
    """Open `count` keep-alive connections, each after one hit, and leave them idle; the
    edge's RSS with all of them open."""
    before = RssSampler(servers.edge_pids).sample()
    sockets: list[socket.socket] = []
    request = f"GET /bin/1k HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", servers.edge_port), timeout=10)
            sockets.append(sock)
            sock.sendall(request)
        answered = 0
        for sock in sockets:
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            answered += data.startswith(b"HTTP/1.1 200")
        with RssSampler(servers.edge_pids) as sampler:
            time.sleep(2.0)
        return (
            f"| {count:,} idle keep-alive connections ({answered:,} answered 200) | - | - "
            f"| {before / 1024:.0f} | **{sampler.max_total_kib / 1024:.0f}** "
            f"| {sampler.max_single_kib / 1024:.0f} |"
        )
    finally:
        for sock in sockets:
            sock.close()


# --------------------------------------------------------------------------- main


def versions() -> str:
    """One line naming what was measured with."""
    nginx = run_quiet([_which("nginx") or "nginx", "-v"]).stderr.strip().split("/")[-1]
    wrk = run_quiet(["wrk", "-v"]).stdout.strip().splitlines()
    wrk_version = wrk[0].split()[1] if wrk else "?"
    return (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, nginx {nginx}, wrk {wrk_version}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables, and write them with `--write`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--mode", choices=("all", "hits", "rss"), default="all")
    parser.add_argument(
        "--workers", type=int, default=0, help="edge workers (0: the default, one per core)"
    )
    parser.add_argument("--front", choices=("httptools", "aiohttp"), default="httptools")
    parser.add_argument("--access-log", choices=("on", "off"), default="on")
    parser.add_argument(
        "--file-bodies",
        choices=("sendfile", "chunks"),
        default="sendfile",
        help="how the edge sends bodies from their files (EDGESHIELD_FILE_BODIES)",
    )
    parser.add_argument(
        "--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, of {sorted(CASES)}"
    )
    parser.add_argument("--write", metavar="FILE", help="also write the results as Markdown")
    args = parser.parse_args(argv)
    cases = [CASES[name] for name in args.cases.split(",")]

    signal.signal(signal.SIGTERM, _exit_on_signal)
    notes: list[str] = []
    brotli = ensure_tools(notes)
    procs = Processes()
    started = datetime.datetime.now(datetime.UTC)
    sections: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeshield-bench-") as tmp:
        servers = Servers(Path(tmp), procs, notes)
        servers.front = args.front
        servers.access_log = args.access_log == "on"
        servers.file_bodies = args.file_bodies
        nginx_workers = args.workers or os.cpu_count() or 1
        try:
            servers.start_origin()
            servers.start_edge(args.workers)
            if args.mode in ("all", "hits"):
                servers.start_nginx(nginx_workers, brotli)
                warm(servers, cases)
                results = bench_hits(servers, cases, args.rounds, args.duration)
                sections.append(hits_table(servers, cases, results))
                sections.append(hit_rss_table(servers, cases))
            if args.mode in ("all", "rss"):
                sections.append(bench_rss(servers))
        finally:
            procs.stop_all()

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/hits.py", *sys.argv[1:]])
    notes.insert(
        0,
        f"Edge: `workers = {servers.edge_workers or 'auto'}`, `front = {args.front}`, access "
        f"log {args.access_log}, file bodies by {args.file_bodies}; nginx: "
        f"`worker_processes {nginx_workers}`, "
        f"proxy_cache, gzip level 6 and "
        + ("br level 4 on the fly." if brotli else "no br module (gzip only) on the fly."),
    )
    body = "\n\n".join(sections)
    print(body)
    for note in notes:
        print(f"- {note}")
    if args.write:
        Path(args.write).write_text(
            _document(command, started, args, body, notes), encoding="utf-8"
        )
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


def _document(
    command: str,
    started: datetime.datetime,
    args: argparse.Namespace,
    body: str,
    notes: list[str],
) -> str:
    return f"""# Cache hits: edge against nginx proxy_cache

Measured {started:%Y-%m-%d %H:%M} UTC on {versions()}; all on 127.0.0.1, the load
generator sharing the cores with the servers.

```
{command}
```

`wrk -t2 -c64 -d{args.duration:g}s --latency` on keep-alive connections against the edge
and nginx in turn, interleaved, {args.rounds} rounds; medians (req/s and latency
percentiles), the ratio of the medians and the range of the per-round ratios. The
origin (the demo origin's sized objects, `demo/sized.py`) sends
`Cache-Control: public, max-age=3600`; every URL is checked to be a hit on both servers
before measuring. Identity rows fetch incompressible bytes; the br row fetches
JSON-like text that the edge compressed once at fill time and nginx compresses on each
request.

{body}

Notes:
{chr(10).join(f"- {n}" for n in notes)}
- nginx: `sendfile on`, `access_log off`, `keepalive_requests 1000000`; the
  identity rows use a server block with no compression filter, the compressed rows a
  second server block on the same cache with gzip (level 6) and br (level 4). No
  `tcp_nopush`: with it, 100 KiB hits over loopback stall on 40 ms timers (measured
  here: about 1,800 req/s against 48,000 without). The edge's access log is on
  unless the command says `--access-log off` (written to a file).
- The RSS rows sample `VmRSS` of every edge process (parent and workers) every
  100 ms while one client reads the 1 GiB object and discards it.
- The machine is shared and noisy: compare only ratios taken in the same run.
"""


if __name__ == "__main__":
    sys.exit(main())
