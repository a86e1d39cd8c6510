"""Micro-benchmark of the object store: µs per peek, get and commit by body size.

Not a test: it prints figures for docs/benchmarks.md. Run from the repository root:

    .venv/bin/python bench/store_ops.py [--rounds N] [--sizes 1k,16k,100k,1m]
                                        [--row-body-max BYTES]

- peek: a hot hit from the memory tier (no disk, no executor)
- get (memory): `get` of a key in the memory tier
- get (disk): `get` with the memory tier emptied first: index row + file checks
  (+ reading the body in when it is small enough to promote); a body of at most
  64 KiB is read on the event loop (`edge.store.disk_inline`)
- get (gateway): the same with the inline path off, every step on the I/O gateway
- read: `read_body` of the whole body from its file (memory tier bypassed; "-" for
  a body kept in its index row, which has no file)
- commit: begin + writes of 16 KiB chunks + commit, replacing the previous body

`--row-body-max` is the store's `row_body_max`: bodies up to it are kept in their
index row (default `ROW_BODY_MAX`; 0 puts every body in a file of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge.cache.model import ObjectMeta
from edge.store import ROW_BODY_MAX, BodyRef, DiskStore, read_body

UNITS = {"k": 1024, "m": 1024 * 1024}
CHUNK = 16 * 1024
#: twelve header fields, as a small object from a typical origin has
HEADERS = tuple((f"X-Field-{n}", f"value of field {n}") for n in range(12))


def object_meta(target: str) -> ObjectMeta:
    """Metadata of the size and shape the engine stores for a small object."""
    now = time.time()
    return ObjectMeta(
        200, HEADERS, HEADERS, 0.0, now, now, 3600.0, 0.0, 0.0, False, False, '"tag"',
        None, "application/json", "identity", ("key-1",), "", "", True,
        "www.example.com", target, "bench",
    )  # fmt: skip


async def timed(n: int, op: Callable[[], Awaitable[object]]) -> float:
    """Median over 5 batches of the µs per call of `op`."""
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            await op()
        batches.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(batches)


def parse_sizes(text: str) -> dict[str, int]:
    """`1k,16k,1m` as labelled byte counts."""
    sizes = {}
    for item in text.split(","):
        number, unit = item[:-1], item[-1].lower()
        sizes[f"{number} {unit.upper()}iB"] = int(number) * UNITS[unit]
    return sizes


async def bench(rounds: int, sizes: dict[str, int], row_body_max: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await DiskStore.open(
            os.path.join(tmp, "cache"), max_bytes=1 << 34, row_body_max=row_body_max
        )
        rows = []
        for label, size in sizes.items():
            body = os.urandom(size)
            n = max(20, rounds if size < 1 << 20 else rounds // 10)

            async def commit(key: str = f"k{size}", body: bytes = body) -> None:
                writer = store.begin(key)
                for pos in range(0, len(body), CHUNK):
                    await writer.write(body[pos : pos + CHUNK])
                await writer.commit(object_meta(key))

            await commit()
            key = f"k{size}"
            await store.get(key)

            async def peek(key: str = key) -> None:
                assert store.peek(key) is not None

            async def get_memory(key: str = key) -> None:
                assert await store.get(key) is not None

            async def get_disk(key: str = key) -> None:
                store.memory.discard(key)
                assert await store.get(key) is not None

            async def get_gateway(key: str = key) -> None:
                mode, store._inline.mode = store._inline.mode, "off"
                try:
                    await get_disk(key)
                finally:
                    store._inline.mode = mode

            entry = await store.get(key)
            assert entry is not None
            ref = entry.bodies["identity"]
            on_disk = BodyRef(ref.encoding, ref.size, None, ref.path)

            async def read(ref: BodyRef = on_disk) -> None:
                async for _ in read_body(ref):
                    pass

            rows.append(
                (
                    label,
                    await timed(n * 10, peek),
                    await timed(n, get_memory),
                    await timed(n, get_disk),
                    await timed(n, get_gateway),
                    # before commit replaces the file
                    await timed(n, read) if ref.path is not None else float("nan"),
                    await timed(n, commit),
                )
            )
        await store.close()
    print(
        f"{'size':>8} {'peek':>8} {'get mem':>9} {'get disk':>9} {'get gw':>9} "
        f"{'read':>9} {'commit':>9}  (µs)"
    )
    for label, *figures in rows:
        print(f"{label:>8} " + " ".join(f"{f:>9.1f}" if f == f else f"{'-':>9}" for f in figures))


def main() -> None:
    """Parse arguments and run on uvloop when it is installed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--sizes", default="1k,100k,1m", help="body sizes: 1k,16k,1m")
    parser.add_argument("--row-body-max", type=int, default=ROW_BODY_MAX)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(bench(args.rounds, parse_sizes(args.sizes), args.row_body_max))


if __name__ == "__main__":
    main()
