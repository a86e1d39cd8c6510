"""HTTP/2 hits on a hot set and uniform over a store larger than the memory tier.

Not a test: prints a line per round. Run from the repository root:

    .venv/bin/python bench/h2_disk_hits.py [--count 100000] [--rounds 3] [--duration 5]

All on 127.0.0.1: a throwaway certificate (trustme) for www.bench.test, the demo
origin, and one edge process (one worker, access log off) with `tls_listen`, its
cache in a temp directory (on tmpfs with `TMPDIR=/dev/shm`). It fills `--count`
objects of 1 KiB through h2 (h2load asking for each `?u=N` once), then each round
runs h2load on one connection with 32 streams: hits on 1,000 of them (the hot set,
in the memory tier), then hits over all of them in an order shuffled anew for the
round (so no object is asked for twice in a round, and most are read from disk: the
default memory tier of 64 MiB holds about 18,000 such objects). Every process it
starts it stops, and the temp directory goes with them.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hits  # a sibling script, not a package
from tls import HOST, free_port, wait_port

HOT = 1000


def h2load(port: int, uris: Path, duration: float | None = None, count: int = 0) -> float:
    """Answers per second of h2load asking for the URIs in `uris` in order, on one
    connection with 32 streams (for `duration` seconds, or `count` requests); raises
    if any answer was a 4xx or 5xx."""
    argv = ["h2load", "-c1", "-m32", "-t1", f"--connect-to=127.0.0.1:{port}", "-i", str(uris)]
    argv += [f"-D{duration:g}"] if duration is not None else ["-n", str(count)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not rate or not codes or int(codes.group(1)) == 0 or codes.group(2) != "0" != codes.group(3):
        raise RuntimeError(f"h2load failed:\n{out}")
    return float(rate.group(1))


def main() -> int:
    """Fill, measure, print; stop everything started."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000, help="objects stored")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per h2load run")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        print("h2load is needed (Debian: nghttp2-client)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="edgeshield-h2-disk-"))
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "127.0.0.1")
    (root / "bench.crt").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    (root / "bench.key").write_bytes(cert.private_key_pem.bytes())
    origin_port, edge_port, tls_port, admin_port = (free_port() for _ in range(4))
    (root / "fleet.toml").write_text(
        f'[[regions]]\nname = "eu"\nlatitude = 50.1\nlongitude = 8.7\n\n'
        f'[[services]]\nname = "bench"\nhosts = ["{HOST}"]\n'
        f'origins = ["http://127.0.0.1:{origin_port}"]\n'
        f'tls_cert = "{root / "bench.crt"}"\ntls_key = "{root / "bench.key"}"\n\n'
        f'[[edges]]\nname = "edge1"\nregion = "eu"\nlisten = "127.0.0.1:{edge_port}"\n'
        f'admin_listen = "127.0.0.1:{admin_port}"\ncache_dir = "{root / "cache"}"\n'
        f'cache_size = "4GiB"\ntls_listen = "127.0.0.1:{tls_port}"\nworkers = 1\n'
    )
    uris = [f"https://{HOST}:{tls_port}/bin/1k?u={n}" for n in range(args.count)]
    random.shuffle(uris)
    (root / "all.txt").write_text("\n".join(uris) + "\n")
    (root / "hot.txt").write_text("\n".join(uris[:HOT]) + "\n")
    env = {"EDGESHIELD_NODE_SECRET": "bench", "EDGESHIELD_ACCESS_LOG": "0"}
    origin = [sys.executable, "-m", "demo.origin", "--listen", f"127.0.0.1:{origin_port}"]
    edge = [sys.executable, "-m", "cli.main", "edge", "--config", str(root / "fleet.toml")]
    procs = hits.Processes()
    procs.start([*origin, "--quiet"], root / "origin.log")
    procs.start([*edge, "--node", "edge1"], root / "edge.log", env)
    try:
        for port in (origin_port, tls_port):
            wait_port(port)
        started = time.perf_counter()
        h2load(tls_port, root / "all.txt", count=args.count)
        print(f"filled {args.count:,} objects in {time.perf_counter() - started:.1f} s")
        h2load(tls_port, root / "hot.txt", duration=2)  # the hot set into the tier
        for n in range(1, args.rounds + 1):
            hot = h2load(tls_port, root / "hot.txt", args.duration)
            random.shuffle(uris)
            (root / "round.txt").write_text("\n".join(uris) + "\n")
            uniform = h2load(tls_port, root / "round.txt", args.duration)
            print(
                f"round {n}: h2 hot hits {hot:,.0f}/s, uniform over {args.count:,} "
                f"{uniform:,.0f}/s ({uniform / hot:.2f}x)",
                flush=True,
            )
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
