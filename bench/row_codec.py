"""What a disk hit's index row costs on the event loop: the lookup and the decoding.

Not a test: it prints a Markdown table. Run from the repository root:

    TMPDIR=/dev/shm .venv/bin/python bench/row_codec.py [--rows 1000000] [--lookups 200000]

Fills a store index (`DiskIndex`, the edge's own schema and settings) with `rows`
rows of a 1 KiB object whose metadata is what the demo origin's `/bin/1k` gives
(ten upstream fields), each body kept in its row, written in the current format;
then, on a read-only connection as `disk_inline.InlineReader` opens it, times per
row in random order:

- the SELECT by key (`disk_inline._SELECT`) against one by row id;
- decoding the row as the previous release wrote it (a pickled `_Record` of an
  `ObjectMeta`) against the current format (`disk_layout.encode_row`).

CPU time per call (`time.process_time`), medians of `--repeat` passes.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edge.cache.model import ObjectMeta
from edge.store.disk_index import DiskIndex, _Record
from edge.store.disk_inline import _SELECT
from edge.store.disk_layout import decode_row, encode_row
from edge.store.interface import body_checksum

KiB = 1024


def sample_meta(n: int) -> ObjectMeta:
    """The metadata of `/bin/1k?u=n` as an edge stores it from the demo origin."""
    upstream = (
        ("Server", "demo-origin"),
        ("Date", "Tue, 01 Dec 2026 07:00:00 GMT"),
        ("Cache-Control", "public, max-age=3600"),
        ("Content-Type", "application/octet-stream"),
        ("ETag", f'"{n:08x}-1k"'),
        ("Last-Modified", "Tue, 01 Dec 2026 06:00:00 GMT"),
        ("X-Origin", "demo"),
        ("Via", "1.1 shield1"),
        ("Cache-Status", "shield1; fwd=uri-miss; stored"),
        ("Accept-Ranges", "bytes"),
    )
    client = tuple(pair for pair in upstream if pair[0] not in ("Cache-Status", "Via"))
    now = time.time()
    return ObjectMeta(
        status=200,
        upstream_headers=upstream,
        client_headers=client,
        corrected_initial_age=0.0,
        response_time=now,
        stored_at=now - 0.01,
        freshness_lifetime=3600.0,
        stale_while_revalidate=0.0,
        stale_if_error=0.0,
        must_revalidate=False,
        no_cache=False,
        etag=f'"{n:08x}-1k"',
        last_modified=now - 3600,
        content_type="application/octet-stream",
        upstream_encoding="identity",
        surrogate_keys=(),
        upstream_cache_status="shield1; fwd=uri-miss; stored",
        upstream_via="1.1 shield1",
        compressible=False,
        host="www.example.com",
        target=f"/bin/1k?u={n}",
        service="site",
    )


def fill(directory: Path, rows: int) -> None:
    """`rows` rows of a 1 KiB body kept in its row, 1,000 to a transaction."""
    tmp = directory / "tmp" / "bench"
    index = DiskIndex(str(directory), str(tmp), 256 * KiB)
    index.start()
    body = os.urandom(KiB)
    checksum = body_checksum(body)
    for start in range(0, rows, 1000):
        with index._writing():
            for n in range(start, min(rows, start + 1000)):
                record = _Record(sample_meta(n), (("identity", body, KiB, checksum),))
                index.index.set(f"site www.example.com/bin/1k?u={n}", record, tag=KiB)
    index.close()


def per_call(fn: Callable[[int], object], order: Sequence[int], repeat: int) -> float:
    """Median µs of CPU per call of `fn` over `order`."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        for n in order:
            fn(n)
        times.append((time.process_time() - started) / len(order) * 1e6)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    """Fill an index, time lookups and decodings, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="row-codec-") as tmp:
        directory = Path(tmp)
        started = time.monotonic()
        fill(directory, args.rows)
        filled = time.monotonic() - started
        db = sqlite3.connect(str(directory / "index" / "cache.db"), isolation_level=None)
        db.execute("PRAGMA query_only = 1")
        db.execute("PRAGMA mmap_size = 0")
        db.execute("PRAGMA cache_size = -2048")
        rowids = dict(db.execute("SELECT key, rowid FROM Cache WHERE raw = 1").fetchall())
        keys = list(rowids)
        order = [random.randrange(len(keys)) for _ in range(args.lookups)]
        now = time.time()
        by_key = per_call(
            lambda n: db.execute(_SELECT, (keys[n], now)).fetchone(), order, args.repeat
        )
        by_rowid_sql = "SELECT mode, value FROM Cache WHERE rowid = ?"
        by_rowid = per_call(
            lambda n: db.execute(by_rowid_sql, (rowids[keys[n]],)).fetchone(), order, args.repeat
        )
        body = os.urandom(KiB)
        checksum = body_checksum(body)
        samples = 1000
        records = [
            _Record(sample_meta(n), (("identity", body, KiB, checksum),)) for n in range(samples)
        ]
        old_rows = [pickle.dumps(record, pickle.HIGHEST_PROTOCOL) for record in records]
        new_rows = [row for row in map(encode_row, records) if isinstance(row, bytes)]
        assert len(new_rows) == samples, "a sample row fell back to pickling"
        assert decode_row(new_rows[5]) == pickle.loads(old_rows[5])
        picks = [n % samples for n in order]
        unpickle = per_call(lambda n: pickle.loads(old_rows[n]), picks, args.repeat)
        decode = per_call(lambda n: decode_row(new_rows[n]), picks, args.repeat)
        db.close()
    print(
        f"{args.rows:,} rows filled in {filled:.1f} s; µs of CPU per call, median of {args.repeat}"
    )
    print()
    print("| step | before | after |")
    print("|---|---|---|")
    print(f"| lookup (SELECT by key / by row id) | {by_key:.2f} | {by_rowid:.2f} |")
    print(
        f"| row decoded (pickled `_Record` / `encode_row`'s, {len(old_rows[0])} / "
        f"{len(new_rows[0])} bytes) | {unpickle:.2f} | {decode:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
