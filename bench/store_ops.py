"""Micro-benchmark of the object store: µs per peek, get and commit by body size.

Not a test: it prints figures for docs/benchmarks.md. Run from the repository root:

    .venv/bin/python bench/store_ops.py [--rounds N]

- peek: a hot hit from the memory tier (no disk, no executor)
- get (memory): `get` of a key in the memory tier
- get (disk): `get` with the memory tier emptied first: index row + file checks
  (+ reading the body in when it is small enough to promote); a body of at most
  64 KiB is read on the event loop (`edge.store.disk_inline`)
- get (gateway): the same with the inline path off, every step on the I/O gateway
- read: `read_body` of the whole body from disk (memory tier bypassed)
- commit: begin + writes of 16 KiB chunks + commit, replacing the previous body
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
from edge.store import BodyRef, DiskStore, read_body

SIZES = {"1 KiB": 1024, "100 KiB": 100 * 1024, "1 MiB": 1024 * 1024}
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


async def bench(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await DiskStore.open(os.path.join(tmp, "cache"), max_bytes=1 << 34)
        rows = []
        for label, size in SIZES.items():
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
                    await timed(n, read),  # before commit replaces the file
                    await timed(n, commit),
                )
            )
        await store.close()
    print(
        f"{'size':>8} {'peek':>8} {'get mem':>9} {'get disk':>9} {'get gw':>9} "
        f"{'read':>9} {'commit':>9}  (µs)"
    )
    for label, *figures in rows:
        print(f"{label:>8} " + " ".join(f"{f:>9.1f}" for f in figures))


def main() -> None:
    """Parse arguments and run on uvloop when it is installed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(bench(args.rounds))


if __name__ == "__main__":
    main()
