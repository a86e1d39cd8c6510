"""Micro-benchmark of body checksums: what choosing and checking one costs per size.

Not a test: it prints figures for docs/benchmarks.md. Run from the repository root:

    .venv/bin/python bench/checksum.py [--rounds N]

- hash: µs to checksum a body in memory with zlib.crc32, xxh3-64 (the one kept)
  and blake2b (128-bit), the candidates weighed
- read: µs to read a whole body from disk (page cache) with `read_body`, without a
  checksum and with the check done as it streams (the path of a body too large for
  the memory tier)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable

import xxhash

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge.store import BodyRef, DiskStore, read_body

HASH_SIZES = {"1 KiB": 1024, "100 KiB": 100 * 1024, "1 MiB": 1024 * 1024}
READ_SIZES = {"1 MiB": 1024 * 1024, "3 MiB": 3 * 1024 * 1024, "16 MiB": 16 * 1024 * 1024}
HASHES: dict[str, Callable[[bytes], object]] = {
    "zlib.crc32": zlib.crc32,
    "xxh3-64": xxhash.xxh3_64_intdigest,
    "blake2b-128": lambda data: hashlib.blake2b(data, digest_size=16).digest(),
}


def timed_sync(n: int, op: Callable[[], object]) -> float:
    """Median over 5 batches of the µs per call of `op`."""
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            op()
        batches.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(batches)


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
    print("| size | " + " | ".join(HASHES) + " |")
    print("|---|" + "---|" * len(HASHES))
    for label, size in HASH_SIZES.items():
        body = os.urandom(size)
        n = max(10, rounds if size < 1 << 20 else rounds // 10)
        cells = [f"{timed_sync(n, lambda h=h, body=body: h(body)):,.1f}" for h in HASHES.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print("| size | read, no check | read, checked | cost of the check |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        store = await DiskStore.open(os.path.join(tmp, "cache"), max_bytes=1 << 34)
        for label, size in READ_SIZES.items():
            body = os.urandom(size)
            writer = store.begin(label)
            for pos in range(0, size, 256 * 1024):
                await writer.write(body[pos : pos + 256 * 1024])
            entry = await writer.commit("meta")
            ref = entry.bodies["identity"]
            plain = BodyRef(ref.encoding, ref.size, None, ref.path)
            checked = BodyRef(ref.encoding, ref.size, None, ref.path, ref.checksum)
            n = max(5, rounds // (10 * max(1, size >> 20)))

            async def read(ref: BodyRef) -> None:
                async for _ in read_body(ref, chunk_size=1024 * 1024):
                    pass

            without = await timed(n, lambda plain=plain: read(plain))
            with_check = await timed(n, lambda checked=checked: read(checked))
            print(
                f"| {label} | {without:,.0f} | {with_check:,.0f} | "
                f"{with_check - without:+,.0f} ({(with_check / without - 1) * 100:+.0f}%) |"
            )
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    asyncio.run(bench(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
