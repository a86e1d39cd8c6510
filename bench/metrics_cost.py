"""What metrics that add up over worker processes cost a node: on the hit path, and
per scrape. Not a test: it prints a Markdown table.

    .venv/bin/python bench/metrics_cost.py [--rounds 3] [--duration 5]

1. The hit path: the aggregation adds nothing to it (each process adds to its own
   plain numbers; worker 0 asks the others for theirs only on a scrape); counting
   answers by service and status class adds one call per request. Timed here with
   timeit, beside the two counter increments a hit already made.
2. End to end: a 2-worker edge answering cache hits under `wrk -t2 -c64`, in rounds
   alternating between nobody scraping and `/metrics` scraped 10 times a second
   (150 times Prometheus's usual 15 s interval); hits/s of each, and their ratio in
   the same run. Also the time one scrape takes (worker 0 asking worker 1).

Everything on 127.0.0.1; every process it starts it stops.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.metrics import NodeMetrics  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

SECRET = "bench-node-secret"
HOST = "www.example.com"


def micro() -> dict[str, float]:
    """Nanoseconds per call of what a hit does to metrics."""
    metrics = NodeMetrics("e", "edge", {HOST: "site"})
    number = 1_000_000
    hit = min(timeit.repeat(metrics.hits.inc, number=number, repeat=5)) / number * 1e9
    observe = min(
        timeit.repeat(lambda: metrics.hit_seconds.observe(0.0003), number=number, repeat=5)
    )
    responded = min(timeit.repeat(lambda: metrics.responded(HOST, 200), number=number, repeat=5))
    return {
        "hits.inc": hit,
        "hit_seconds.observe": observe / number * 1e9,
        "responded (new)": responded / number * 1e9,
    }


def fleet_file(root: Path, origin: str, listen: str, admin: str) -> Path:
    text = f"""
[[regions]]
name = "eu"
latitude = 50.1
longitude = 8.7

[[services]]
name = "site"
hosts = ["{HOST}"]
origins = ["{origin}"]

[[edges]]
name = "edge1"
region = "eu"
listen = "{listen}"
admin_listen = "{admin}"
cache_dir = "{root / "edge1"}"
cache_size = "256MiB"
workers = 2
"""
    path = root / "fleet.toml"
    path.write_text(text)
    return path


def wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


def scrape(admin: str) -> str:
    request = urllib.request.Request(
        f"http://{admin}/metrics", headers={"Authorization": f"Bearer {SECRET}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def wrk(port: int, duration: float) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c64",
            f"-d{duration:g}s",
            "-H",
            f"Host: {HOST}",
            f"http://127.0.0.1:{port}/json/1k",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found, out
    return float(found.group(1))


def end_to_end(rounds: int, duration: float) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="metrics-cost-"))
    origin_port, port, admin_port = free_port(), free_port(), free_port()
    admin = f"127.0.0.1:{admin_port}"
    env = {**os.environ, "EDGESHIELD_NODE_SECRET": SECRET, "EDGESHIELD_ACCESS_LOG": "0"}
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "demo.origin", "--listen", f"127.0.0.1:{origin_port}"],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        wait_port(origin_port)
        path = fleet_file(root, f"http://127.0.0.1:{origin_port}", f"127.0.0.1:{port}", admin)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli.main",
                    "edge",
                    "--config",
                    str(path),
                    "--node",
                    "edge1",
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        wait_port(admin_port)
        while (
            "edgeshield_workers_live{" not in scrape(admin)
            or re.search(r"edgeshield_workers_live\{[^}]*\} 2", scrape(admin)) is None
        ):
            time.sleep(0.1)
        wrk(port, 1.0)  # warm: every worker has the object
        scrape_ms = []
        for _ in range(50):
            started = time.perf_counter()
            scrape(admin)
            scrape_ms.append((time.perf_counter() - started) * 1000)
        quiet, scraped = [], []
        for _ in range(rounds):
            quiet.append(wrk(port, duration))
            stop = threading.Event()

            def scraper(stop: threading.Event = stop) -> None:
                while not stop.wait(0.1):
                    scrape(admin)

            thread = threading.Thread(target=scraper)
            thread.start()
            try:
                scraped.append(wrk(port, duration))
            finally:
                stop.set()
                thread.join()
        return {
            "quiet": quiet,
            "scraped": scraped,
            "ratio": statistics.median(scraped) / statistics.median(quiet),
            "scrape_ms_median": statistics.median(scrape_ms),
        }
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    print("| per hit | ns |\n|---|---|")
    for name, ns in micro().items():
        print(f"| {name} | {ns:.0f} |")
    result = end_to_end(args.rounds, args.duration)
    print()
    print("| 2-worker edge, cache hits | hits/s per round | median |\n|---|---|---|")
    for name in ("quiet", "scraped"):
        values = result[name]
        assert isinstance(values, list)
        print(
            f"| {name} | {' '.join(f'{v:.0f}' for v in values)} | {statistics.median(values):.0f} |"
        )
    print(
        f"\nscraped / quiet: {result['ratio']:.3f}; one scrape of the 2-worker node: "
        f"{result['scrape_ms_median']:.2f} ms (median of 50)"
    )


if __name__ == "__main__":
    main()
