"""What a miss's commit costs the I/O gateway: CPU per object stored, by batch size.

Not a test: it prints a Markdown table. Run from the repository root:

    TMPDIR=/dev/shm .venv/bin/python bench/commit_cost.py [--objects 2000] [--repeat 7]
    .venv/bin/python bench/commit_cost.py --durable --objects 200 --repeat 3   # on disk

Opens a store index (`DiskIndex`, the edge's own schema and settings) in a fresh
directory and commits new 1 KiB objects (the metadata `bench/row_codec.py` gives
`/bin/1k?u=n`, each body kept in its row) through `DiskIndex.install_many`, the
call a `DiskStore` makes on its gateway thread for each batch of ready commits, in
batches of 1, 4 and 16 (under cold misses a worker's batches hold a few objects).
CPU time per object (`time.process_time`) and elapsed time per object, medians of
`--repeat` passes of `--objects` objects each. With `--durable` every object is
committed as a `durable_objects` service's is (its transaction synced at its commit):
run it with TMPDIR on the disk that is to be measured, not on tmpfs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from row_codec import sample_meta  # a sibling script, not a package

from edge.store.disk_index import DiskIndex
from edge.store.disk_layout import Install
from edge.store.interface import body_checksum

BATCHES = (1, 4, 16)


def per_object(
    index: DiskIndex, batch: int, objects: int, first: int, durable: bool = False
) -> tuple[float, float]:
    """µs of CPU and µs elapsed per object to commit `objects` new objects in batches
    of `batch` (`durable`: as a `durable_objects` service's)."""
    body = os.urandom(1024)
    checksum = body_checksum(body)
    metas = [sample_meta(first + n) for n in range(objects)]
    started, clock = time.process_time(), time.perf_counter()
    for start in range(0, objects, batch):
        index.install_many(
            [
                Install(
                    f"k{first + n}", "", "identity", metas[n], len(body), checksum, body, durable
                )
                for n in range(start, min(start + batch, objects))
            ]
        )
    cpu = (time.process_time() - started) / objects * 1e6
    return cpu, (time.perf_counter() - clock) / objects * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000, help="objects per pass")
    parser.add_argument("--repeat", type=int, default=7, help="passes per batch size")
    parser.add_argument("--durable", action="store_true", help="commit as durable_objects")
    args = parser.parse_args(argv)
    print(
        "| objects per batch | µs of CPU per object (median) | per pass "
        "| µs elapsed per object (median) |"
    )
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="edgeshield-commits-") as tmp:
        index = DiskIndex(tmp, os.path.join(tmp, "tmp"), 64 * 1024)
        index.start()
        try:
            first = 0
            for batch in BATCHES:
                passes, elapsed = [], []
                for _ in range(args.repeat):
                    cpu, wall = per_object(index, batch, args.objects, first, args.durable)
                    passes.append(cpu)
                    elapsed.append(wall)
                    first += args.objects
                shown = ", ".join(f"{p:.1f}" for p in passes)
                print(
                    f"| {batch} | {statistics.median(passes):.1f} | {shown} "
                    f"| {statistics.median(elapsed):.0f} |"
                )
        finally:
            index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
