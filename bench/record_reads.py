"""What reading one stored object costs in memory alone, over few objects and many.

Not a test, and not the edge: the two reads a ready hit (`DiskStore.ready_answer`)
makes, with no code around them, timed in this process over `--counts` objects:

- `record`: a slice of one record from a mapped file of records of `--record`
  bytes (a ready answer of a 1 KiB object is about 1.4 KiB), as the edge reads a
  ring on tmpfs; `first line`: a slice of its first 64 bytes only;
- `slot`: one 8-byte slot of a table of 2^21 (`ReadyPlaces` at its largest, an
  anonymous mapping), a slot picked among twice `count` of them.

Each read is of an object picked uniformly among `count`, so over 10^3 the records
stay in the CPU's caches and over 10^6 almost none do: the difference is what the
machine's memory (caches, TLB, page walks) adds to a uniform hit over a large store
before any code runs. Prints nanoseconds per read, medians of `--rounds`. Run from
the repository root (the file takes `count` x `record` bytes of TMPDIR):

    TMPDIR=/dev/shm .venv/bin/python bench/record_reads.py [--counts 1000,1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: slots in the table (`edge.store.ready_places.PLACES_MAX`)
SLOTS = 1 << 21
#: reads timed per kind, per count, per round
READS = 300_000


def write_records(path: Path, count: int, size: int) -> None:
    """A file of `count` records of `size` bytes, each different (its number first)."""
    block = os.urandom(size)
    with path.open("wb") as file:
        batch = []
        for number in range(count):
            batch.append(number.to_bytes(8, "little") + block[8:])
            if len(batch) == 4096:
                file.write(b"".join(batch))
                batch.clear()
        file.write(b"".join(batch))


def time_reads(view: mmap.mmap, slots: memoryview, count: int, size: int) -> dict[str, float]:
    """Nanoseconds per read of each kind over `count` objects."""
    offsets = [random.randrange(count) * size for _ in range(READS)]
    places = [random.randrange(min(SLOTS, 2 * count)) for _ in range(READS)]
    started = time.thread_time_ns()
    for offset in offsets:
        view[offset : offset + size]
    records = time.thread_time_ns()
    for offset in offsets:
        view[offset : offset + 64]
    lines = time.thread_time_ns()
    for place in places:
        slots[place]
    ended = time.thread_time_ns()
    return {
        "record": (records - started) / READS,
        "first line": (lines - records) / READS,
        "slot": (ended - lines) / READS,
    }


def main() -> None:
    """Parse the options, write the file, time the reads, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,1000000", help="objects, comma-separated")
    parser.add_argument("--record", type=int, default=1400, help="bytes of one record")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--huge-slots",
        action="store_true",
        help="ask for transparent huge pages for the slot table (MADV_HUGEPAGE)",
    )
    args = parser.parse_args()
    counts = [int(count) for count in args.counts.split(",")]
    with tempfile.TemporaryDirectory(prefix="edgeshield-reads-") as tmp:
        path = Path(tmp) / "records"
        write_records(path, max(counts), args.record)
        table = mmap.mmap(-1, SLOTS * 8, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if args.huge_slots:
            table.madvise(mmap.MADV_HUGEPAGE)
        slots = memoryview(table).cast("Q")
        for place in range(0, SLOTS, 512):
            slots[place] = place  # every page of the table present, as a full store's
        with path.open("rb") as file:
            view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            view.madvise(mmap.MADV_WILLNEED)
            for page in range(0, len(view), mmap.PAGESIZE):
                view[page]  # mapped in, as the edge populates its ring at start
            results: dict[int, dict[str, list[float]]] = {count: {} for count in counts}
            for _round in range(args.rounds):
                for count in counts:
                    for kind, nanoseconds in time_reads(view, slots, count, args.record).items():
                        results[count].setdefault(kind, []).append(nanoseconds)
            view.close()
        slots.release()
        table.close()
    kinds = list(results[counts[0]])
    print(f"ns per read, median of {args.rounds} rounds of {READS:,} ({args.record}-byte records)")
    print("| objects | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for count in counts:
        cells = " | ".join(f"{statistics.median(results[count][kind]):.0f}" for kind in kinds)
        print(f"| {count:,} | {cells} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
