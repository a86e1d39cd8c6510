"""Commits per second of `DiskStore` with several processes writing: one shared
directory (one SQLite index) against one directory per process (sharded).

Not a test: it prints a Markdown table. Run from the repository root:

    .venv/bin/python bench/store_writers.py [--procs 1,2,4] [--seconds 5] [--size 1024]

Each writer process opens the store and commits bodies of `--size` bytes under new
keys, 32 at a time (as concurrent misses do), for `--seconds`; the table gives the
total commits per second over all processes, per layout. It imports `edge.store`
from `PYTHONPATH` first, so the same script measures another checkout of the code
(`PYTHONPATH=/path/to/other/checkout`), which is how the figures before and after a
change to the store are taken in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

if not any(os.path.isdir(os.path.join(p, "edge", "store")) for p in sys.path if p):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONCURRENCY = 32


def writer(directory: str, seconds: float, size: int, tag: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One process: commit bodies for `seconds`, put the count on `out`."""
    from edge.store import DiskStore

    async def run() -> int:
        store = await DiskStore.open(directory, max_bytes=1 << 40, memory_bytes=1 << 20)
        body = os.urandom(size)
        done = 0
        deadline = time.perf_counter() + seconds

        async def one(n: int) -> None:
            w = store.begin(f"{tag}-{n}")
            await w.write(body)
            await w.commit({"n": n})

        n = 0
        while time.perf_counter() < deadline:
            await asyncio.gather(*(one(i) for i in range(n, n + CONCURRENCY)))
            n += CONCURRENCY
            done += CONCURRENCY
        await store.close()
        return done

    out.put(asyncio.run(run()))


def measure(procs: int, shared: bool, seconds: float, size: int) -> float:
    """Commits per second over `procs` writer processes."""
    with tempfile.TemporaryDirectory(prefix="edgeshield-writers-") as tmp:
        queue: multiprocessing.Queue[int] = multiprocessing.Queue()
        children = []
        for p in range(procs):
            directory = os.path.join(tmp, "shared" if shared else f"shard-{p}")
            child = multiprocessing.Process(
                target=writer, args=(directory, seconds, size, f"p{p}", queue)
            )
            child.start()
            children.append(child)
        started = time.perf_counter()
        counts = [queue.get(timeout=seconds + 120) for _ in children]
        elapsed = time.perf_counter() - started
        for child in children:
            child.join(30)
        return sum(counts) / max(elapsed, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the layouts for each process count; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import edge.store

    print(f"edge.store from {os.path.dirname(edge.store.__file__)}", file=sys.stderr)
    print("| writer processes | one shared directory (commits/s) | a directory each |")
    print("|---|---|---|")
    for procs in (int(p) for p in args.procs.split(",")):
        shared = [measure(procs, True, args.seconds, args.size) for _ in range(args.rounds)]
        sharded = [measure(procs, False, args.seconds, args.size) for _ in range(args.rounds)]
        print(
            f"| {procs} | {statistics.median(shared):,.0f} | {statistics.median(sharded):,.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    sys.exit(main())
