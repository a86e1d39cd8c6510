"""What a hit over a large store costs at the least, in this language on this machine.

Not a test, and not the edge: a bare server (uvloop, an `asyncio.Protocol` and the
httptools parser, as the edge's own front) that answers `GET /?u=N` with the N-th of
`--count` ready-made 1 KiB responses and does nothing else. No cache key, no
freshness, no headers built: the floor under any edge written in Python. It keeps
the responses one of three ways:

- `memory`: each response a bytes object in a dict (the memory tier's way);
- `pread`: one file of fixed-size records, one `os.pread` per hit (a body read from
  a file per hit, as nginx and the edge's disk path do);
- `mmap`: the same file mapped, one slice per hit (Varnish's file storage).

For each way and each count it runs wrk (the edge's benchmark settings: 2 threads,
32 connections) with hits on 1,000 of the responses and hits uniform over all of
them, and prints the rates, their ratios against the same way's hot set over
the smallest count, and the server's CPU time per answer (from /proc: wrk, on the
same two cores, may be what limits the rate). Run from the repository root:

    TMPDIR=/dev/shm .venv/bin/python bench/hit_floor.py [--counts 1000,1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hits  # a sibling script, not a package

#: bytes of each ready-made response (head and a 1 KiB body), padded to the record size
RECORD = 1280
BODY = 1024
HOT = 1000
MODES = ("memory", "pread", "mmap")

LUA = (
    hits.THREAD_SEEDS_LUA
    + """
function request()
  return wrk.format(nil, "/?u=" .. tostring(math.random(0, span - 1)))
end
"""
)


def response(n: int) -> bytes:
    """The N-th ready-made response, padded with spaces in its last header to `RECORD`."""
    body = (b"%08d" % n) * (BODY // 8)
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Length: %d\r\nETag: "%d"\r\nX-Pad: ' % (len(body), n)
    )
    pad = RECORD - len(head) - 4 - len(body)
    return head + b" " * pad + b"\r\n\r\n" + body


def write_records(path: Path, count: int) -> None:
    """`count` responses, one after the other, each `RECORD` bytes."""
    with path.open("wb") as out:
        for n in range(count):
            out.write(response(n))


def serve(mode: str, path: Path, count: int, port_file: Path) -> None:
    """Run the bare server until SIGTERM (in a child process)."""
    lookup: Callable[[int], bytes]
    if mode == "memory":
        table = {n: response(n) for n in range(count)}
        lookup = table.__getitem__
    else:
        fd = os.open(path, os.O_RDONLY)
        if mode == "pread":

            def lookup(n: int) -> bytes:
                return os.pread(fd, RECORD, n * RECORD)
        else:
            mapped = mmap.mmap(fd, count * RECORD, prot=mmap.PROT_READ)

            def lookup(n: int) -> bytes:
                start = n * RECORD
                return mapped[start : start + RECORD]

    class Bare(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_message_complete(self) -> None:
            _, _, number = self.url.partition(b"u=")
            n = int(number) if number.isdigit() else -1
            if 0 <= n < count:
                self.transport.write(lookup(n))
            else:
                self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Bare, "127.0.0.1", 0)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        await stop.wait()
        server.close()

    uvloop.run(main())


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, span: int, duration: float, tmp: Path) -> float:
    """req/s of wrk asking for responses uniformly among the first `span`."""
    script = tmp / f"floor-{secrets.token_hex(4)}.lua"
    script.write_text(f"span = {span}\n{LUA}", encoding="utf-8")
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{duration:g}s", "-s", str(script), f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match or "Non-2xx" in out or float(match.group(1)) <= 0:
        raise RuntimeError(f"wrk failed:\n{out}")
    return float(match.group(1))


def start(
    procs: hits.Processes, mode: str, path: Path, count: int, tmp: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """The bare server in a child process, and its port once it listens."""
    port_file = tmp / f"port-{mode}-{count}"
    port_file.unlink(missing_ok=True)
    child = procs.start(
        [sys.executable, __file__, "--serve", mode, str(path), str(count), str(port_file)],
        tmp / f"{mode}-{count}.log",
    )
    deadline = time.monotonic() + 300
    while not port_file.exists() or not port_file.read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {mode} server did not start")
        time.sleep(0.05)
    port = int(port_file.read_text())
    with socket.create_connection(("127.0.0.1", port)):
        pass
    return child, port


def main() -> int:
    """Measure each way over each count, interleaved by round; print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="1000,1000000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        mode, path, count, port_file = args.serve
        serve(mode, Path(path), int(count), Path(port_file))
        return 0
    if not shutil.which("wrk"):
        print("wrk is needed", file=sys.stderr)
        return 2
    counts = sorted(int(c) for c in args.counts.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="edgeshield-floor-"))
    procs = hits.Processes()
    try:
        records = tmp / "records"
        write_records(records, counts[-1])
        #: each way and count's server, and its port
        servers = {
            (mode, count): start(procs, mode, records, count, tmp)
            for mode in MODES
            for count in counts
        }
        rates: dict[tuple[str, int, str], list[float]] = {}
        #: the server's CPU time per answer (µs), which wrk's own limit does not hide
        cpu: dict[tuple[str, int, str], list[float]] = {}
        for round_ in range(1, args.rounds + 1):
            for mode in MODES:
                for count in counts:
                    for load, span in (("hot", min(HOT, count)), ("uniform", count)):
                        child, port = servers[mode, count]
                        used = cpu_seconds(child.pid)
                        rate = run_wrk(port, span, args.duration, tmp)
                        used = cpu_seconds(child.pid) - used
                        rates.setdefault((mode, count, load), []).append(rate)
                        cpu.setdefault((mode, count, load), []).append(
                            used / (rate * args.duration) * 1e6
                        )
            print(f"round {round_} done", flush=True)
        print(
            "| way | objects | hot hits/s | uniform hits/s | uniform / hot of the smallest "
            "| CPU µs per hit, hot | CPU µs per hit, uniform |"
        )
        print("|---|---|---|---|---|---|---|")
        for mode in MODES:
            base = statistics.median(rates[mode, counts[0], "hot"])
            for count in counts:
                hot = statistics.median(rates[mode, count, "hot"])
                uniform = statistics.median(rates[mode, count, "uniform"])
                print(
                    f"| {mode} | {count:,} | {hot:,.0f} | {uniform:,.0f} | {uniform / base:.2f} "
                    f"| {statistics.median(cpu[mode, count, 'hot']):.1f} "
                    f"| {statistics.median(cpu[mode, count, 'uniform']):.1f} |"
                )
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
