"""Benchmark of GeoDNS: answers per second over UDP, and the nearest-edge choice alone.

Not a test: it prints figures for docs/benchmarks.md. Run from the repository root:

    .venv/bin/python bench/geodns.py [--seconds 5] [--window 64]

It writes a 3-region fleet (one edge per region, each region with a /16 of client
networks) into a temporary folder, starts `edgeshield geo serve` as one process
pinned to one core (the load generator gets the other), and sends queries over UDP on
loopback, keeping `--window` queries in flight:

- hot: the same question from the same resolver (the answer cache serves it)
- ECS, 131,072 clients: each query carries a different EDNS Client Subnet (a /32),
  more than the answer cache holds, so every query is parsed and packed anew; the
  clients share 513 /24s, so the route of each /24 is worked out once and kept
- ECS, 131,072 /24s: each query carries a different /24 (10.0.0.0/8 and
  11.0.0.0/8, more than the route cache holds), so every query is also routed
  (mmdb lookup + choice) anew: the worst case

Then, in this process, lookups per second of the choice alone: `Chooser.choose` with a
known location, and `Router.route` (mmdb lookup + choice) over the simulated .mmdb.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnslib import EDNS0, DNSRecord, EDNSOption

from fleet.config import load_fleet, split_host_port
from geo.choice import Location
from geo.mmdb_build import build_fleet_mmdb
from geo.routing import Router, chooser_from_fleet
from geo.source import MmdbSource

REGIONS = [
    ("eu", 50.1, 8.7, "10.1.0.0/16"),
    ("us", 40.7, -74.0, "10.2.0.0/16"),
    ("ap", 35.7, 139.7, "10.3.0.0/16"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_fleet(root: Path) -> Path:
    lines: list[str] = []
    for name, lat, lon, net in REGIONS:
        lines += [
            "[[regions]]",
            f'name = "{name}"',
            f"latitude = {lat}",
            f"longitude = {lon}",
            f'client_networks = ["{net}"]',
            "",
        ]
    lines += [
        "[[services]]",
        'name = "site"',
        'hosts = ["www.example.com"]',
        'origins = ["http://127.0.0.1:9"]',
        "",
    ]
    for i, (name, *_) in enumerate(REGIONS):
        lines += [
            "[[edges]]",
            f'name = "edge-{name}"',
            f'region = "{name}"',
            f'listen = "127.0.0.1:{free_port()}"',
            f'admin_listen = "127.0.0.1:{free_port()}"',
            f'cache_dir = "{root / name}"',
            'cache_size = "16MiB"',
            f'public_address = "127.0.1.{i + 1}"',
            "",
        ]
    lines += [
        "[geo]",
        f'dns_listen = "127.0.0.1:{free_port()}"',
        f'http_listen = "127.0.0.1:{free_port()}"',
        'zone = "cdn.test"',
        'default_region = "us"',
        "",
    ]
    path = root / "fleet.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def hot_queries() -> list[bytes]:
    return [bytes(DNSRecord.question("site.cdn.test").pack())]


def ecs_queries(count: int) -> list[bytes]:
    """`count` queries, each with its own client subnet (a /32 of a region's /16)."""
    queries = []
    for n in range(count):
        record = DNSRecord.question("site.cdn.test")
        subnet = bytes([10, 1 + n % 3, (n // 3 // 256) % 256, (n // 3) % 256])
        option = EDNSOption(8, struct.pack("!HBB", 1, 32, 0) + subnet)
        record.add_ar(EDNS0(udp_len=1232, opts=[option]))
        queries.append(bytes(record.pack()))
    return queries


def ecs24_queries(count: int) -> list[bytes]:
    """`count` queries, each with its own client subnet, a /24 (10.0.0.0/8 onwards)."""
    queries = []
    for n in range(count):
        record = DNSRecord.question("site.cdn.test")
        subnet = bytes([10 + n // 65536, (n // 256) % 256, n % 256])
        option = EDNSOption(8, struct.pack("!HBB", 1, 24, 0) + subnet)
        record.add_ar(EDNS0(udp_len=1232, opts=[option]))
        queries.append(bytes(record.pack()))
    return queries


def load(port: int, queries: list[bytes], seconds: float, window: int) -> tuple[float, int]:
    """Answers per second with `window` queries in flight; also the number lost."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(0.2)
    total = len(queries)
    sent = answered = lost = 0

    def send() -> None:
        nonlocal sent
        wire = queries[sent % total]
        sock.send(struct.pack("!H", sent & 0xFFFF) + wire[2:])
        sent += 1

    for _ in range(window):
        send()
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        try:
            sock.recv(4096)
        except TimeoutError:
            lost += window  # refill the window after a stall
            for _ in range(window):
                send()
            continue
        answered += 1
        if time.perf_counter() >= deadline:
            break
        send()
    elapsed = time.perf_counter() - started
    sock.close()
    return answered / elapsed, lost


def rate(work: Callable[[int], object], seconds: float) -> float:
    """Calls per second of `work(i)` over about `seconds`."""
    n = 0
    started = time.perf_counter()
    while True:
        for _ in range(1000):
            work(n)
            n += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return n / elapsed


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="geodns-bench-") as folder:
        root = Path(folder)
        path = write_fleet(root)
        fleet = load_fleet(path)
        assert fleet.geo is not None
        port = split_host_port(fleet.geo.dns_listen)[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "geo", "serve", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: pin(0),
            env={**os.environ, "EDGESHIELD_NODE_SECRET": "bench"},
        )
        try:
            assert server.stdout is not None
            ready = server.stdout.readline().decode().strip()
            if not ready:
                print("the GeoDNS server did not start", file=sys.stderr)
                return 1
            pin(1)
            rows = []
            for label, queries in (
                ("hot (answer cache)", hot_queries()),
                ("ECS, 131,072 clients in 513 /24s", ecs_queries(131072)),
                ("ECS, 131,072 /24s (each routed)", ecs24_queries(131072)),
            ):
                load(port, queries, 1.0, args.window)  # warm up
                per_second, lost = load(port, queries, args.seconds, args.window)
                rows.append((f"GeoDNS UDP, {label}", per_second, lost))
        finally:
            server.terminate()
            server.wait(10)

        mmdb = root / "fleet.mmdb"
        build_fleet_mmdb(fleet, mmdb)
        source = MmdbSource(str(mmdb))
        chooser = chooser_from_fleet(fleet)
        router = Router(chooser, source)
        healthy = router.healthy
        rng = random.Random(7)
        clients = [
            ipaddress.IPv4Network(
                (int(ipaddress.IPv4Address(f"10.{1 + i % 3}.0.0")) + rng.randrange(65536), 32)
            )
            for i in range(4096)
        ]
        places = [Location(rng.uniform(-60, 70), rng.uniform(-180, 180)) for _ in range(4096)]
        choose = rate(
            lambda i: chooser.choose(clients[i % 4096], places[i % 4096], healthy), args.seconds
        )
        route = rate(lambda i: router.route(clients[i % 4096]), args.seconds)
        source.close()

    print(f"\n{'what':<48} {'per second':>12} {'lost':>6}")
    print("-" * 68)
    for label, per_second, lost in rows:
        print(f"{label:<48} {per_second:>12,.0f} {lost:>6}")
    print(f"{'choice alone (Chooser.choose)':<48} {choose:>12,.0f} {'':>6}")
    print(f"{'mmdb lookup + choice (Router.route)':<48} {route:>12,.0f} {'':>6}")
    print(f"\nserver: {ready}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
