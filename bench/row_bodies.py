"""What keeping a small body in its index row saves, by body size: CPU per commit, CPU
per disk hit, and disk space per object, with bodies in rows against bodies in files.

Not a test: it prints figures for docs/benchmarks.md ("Small bodies in the index
row"), the measurement behind `ROW_BODY_MAX`. Run from the repository root:

    .venv/bin/python bench/row_bodies.py [--objects 2000] [--sizes 1k,4k,16k,32k,64k]
                                         [--rounds 3]

It drives the store's blocking half (`DiskIndex`) and its event-loop reader
(`InlineReader`) directly, in this thread, and counts process CPU time, not wall
time, so the figures hold on a machine other work shares:

- commit: `DiskIndex.install_many` in batches of 32 (as the committer makes under
  load), a body given whole (written in place, or into the row);
- hit: `InlineReader.load` of a random stored key (index row, and the body's file
  when it has one, checksum checked);
- disk: bytes of the store directory (index, its WAL and body files, as `du` counts
  them) per object;
- then, for 1 KiB bodies through the whole `DiskStore` (writer, committer, memory
  tier, eviction), µs of process CPU per commit while a 1 MiB store fills and then
  while every commit evicts (deleted rows give their pages back: diskcache runs
  SQLite with `auto_vacuum = FULL`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge.store import DiskStore, body_checksum
from edge.store.disk_index import DiskIndex, Install
from edge.store.disk_inline import InlineReader, read_mode

BATCH = 32
UNITS = {"k": 1024, "m": 1024 * 1024}


def du(directory: str) -> int:
    """Bytes of the blocks the files under `directory` take."""
    total = 0
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def measure(directory: str, size: int, objects: int, row_body_max: int) -> tuple[float, ...]:
    """(µs CPU per commit, µs CPU per hit, bytes on disk per object)."""
    index = DiskIndex(directory, os.path.join(directory, "tmp", "bench"), 256 * 1024, row_body_max)
    index.start()
    body = os.urandom(size)
    checksum = body_checksum(body)
    keys = [f"https://www.example.com/object/{n}" for n in range(objects)]
    started = time.process_time()
    for pos in range(0, objects, BATCH):
        index.install_many(
            [
                Install(key, "", "identity", {"key": key}, size, checksum, body)
                for key in keys[pos : pos + BATCH]
            ]
        )
    commit = (time.process_time() - started) / objects * 1e6
    reader = InlineReader(directory, read_mode(directory))
    sample = random.choices(keys, k=objects)
    for key in sample[:100]:  # warm the page cache and the reader's connection
        reader.load(key)
    started = time.process_time()
    for key in sample:
        loaded = reader.load(key)
        assert isinstance(loaded, tuple), loaded
    hit = (time.process_time() - started) / objects * 1e6
    reader.close()
    index.close()
    return commit, hit, du(directory) / objects


async def commits_while_evicting(directory: str, row_body_max: int) -> tuple[float, float]:
    """µs of process CPU per 1 KiB commit into a 1 MiB store: filling it, then full."""
    store = await DiskStore.open(directory, max_bytes=1 << 20, row_body_max=row_body_max)
    body = os.urandom(1024)

    async def one(key: str) -> None:
        writer = store.begin(key)
        await writer.write(body)
        await writer.commit(key)

    figures = []
    for first in (0, 1000):  # 1,000 fill the store; the next 1,000 each evict
        started = time.process_time()
        for pos in range(first, first + 1000, BATCH):
            await asyncio.gather(*(one(f"k{n}") for n in range(pos, pos + BATCH)))
        figures.append((time.process_time() - started) / 1000 * 1e6)
    await store.close()
    return figures[0], figures[1]


def main() -> None:
    """Parse arguments, measure each size both ways, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--sizes", default="1k,4k,16k,32k,64k")
    parser.add_argument("--rounds", type=int, default=3, help="the median of this many")
    args = parser.parse_args()
    print(
        f"{'size':>7} | {'commit µs: row':>14} {'file':>6} | {'hit µs: row':>11} {'file':>6}"
        f" | {'disk B/obj: row':>15} {'file':>7}"
    )
    for item in args.sizes.split(","):
        size = int(item[:-1]) * UNITS[item[-1].lower()]
        figures: dict[int, list[tuple[float, ...]]] = {size: [], 0: []}
        for _ in range(args.rounds):
            for row_body_max in (size, 0):
                with tempfile.TemporaryDirectory() as tmp:
                    figures[row_body_max].append(measure(tmp, size, args.objects, row_body_max))
        row = [sorted(column)[len(column) // 2] for column in zip(*figures[size], strict=True)]
        file = [sorted(column)[len(column) // 2] for column in zip(*figures[0], strict=True)]
        print(
            f"{item:>7} | {row[0]:>14.1f} {file[0]:>6.1f} | {row[1]:>11.1f} {file[1]:>6.1f}"
            f" | {row[2]:>15.0f} {file[2]:>7.0f}"
        )
    print(
        f"\n1 KiB commits, µs CPU: {'filling: row':>12} {'file':>6}"
        f" | {'evicting: row':>13} {'file':>6}"
    )
    runs: dict[int, list[tuple[float, float]]] = {1024: [], 0: []}
    for _ in range(args.rounds):
        for row_body_max in (1024, 0):
            with tempfile.TemporaryDirectory() as tmp:
                runs[row_body_max].append(asyncio.run(commits_while_evicting(tmp, row_body_max)))
    row = [sorted(column)[len(column) // 2] for column in zip(*runs[1024], strict=True)]
    file = [sorted(column)[len(column) // 2] for column in zip(*runs[0], strict=True)]
    print(f"{'':>22} {row[0]:>12.0f} {file[0]:>6.0f} | {row[1]:>13.0f} {file[1]:>6.0f}")


if __name__ == "__main__":
    main()
