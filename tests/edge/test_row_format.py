"""The index row of an object: its metadata's field values and its bodies as a
marshalled tuple of plain values (`disk_layout.encode_row`), read back equal on the
event loop and on the gateway; rows of the previous release (a pickled `_Record`)
still read; a damaged row is dropped, never fatal, and a body in it still checked."""

from __future__ import annotations

import contextlib
import marshal
import os
import sqlite3
from pathlib import Path

from edge.cache.model import ObjectMeta
from edge.store import DiskStore, StoredEntry, _Record, body_checksum
from edge.store.disk_layout import ROW_MAGIC, decode_row, encode_row
from tests.support.row_bodies import corrupt_row_body, index_db

KiB = 1024


def meta(target: str = "/a", value: str = '"a"') -> ObjectMeta:
    values: list[object] = [200, (("etag", value),), (("etag", value),), 1.0, 2.0, 3.0, 60.0]
    values += [0.0, 0.0, False, False, value, None, "text/plain", "identity", ("k",), "", ""]
    values += [True, "www.example.com", target, "svc", ("set-cookie",), True]
    return ObjectMeta(*values)  # type: ignore[arg-type]


def raw_row(directory: Path, key: str) -> tuple[int, bytes]:
    with contextlib.closing(sqlite3.connect(index_db(directory))) as db:
        mode, value = db.execute("SELECT mode, value FROM Cache WHERE key = ?", (key,)).fetchone()
    return mode, value


async def store_body(store: DiskStore, key: str, body: bytes, stored: object) -> None:
    writer = store.begin(key)
    await writer.write(body)
    await writer.commit(stored)
    store.memory.discard(key)


def test_a_row_encodes_to_plain_values_and_back() -> None:
    body = os.urandom(KiB)
    record = _Record(meta(), (("identity", body, KiB, body_checksum(body)),))
    encoded = encode_row(record)
    assert isinstance(encoded, bytes) and encoded.startswith(ROW_MAGIC)
    assert decode_row(encoded) == record
    # not an ObjectMeta, or a value marshal does not take: pickled as before
    other = _Record({"meta": 1}, ())
    assert encode_row(other) is other
    assert decode_row(encoded[:-3]) is None
    assert decode_row(b"\x80\x05junk") is None


def test_a_row_with_another_set_of_metadata_fields_does_not_decode() -> None:
    """A row written by a release whose ObjectMeta had one field more or fewer is
    unreadable (dropped, fetched again), never a metadata object with a field unset."""
    record = _Record(meta(), ())
    state = meta().__getstate__()
    for other in (state[:-1], (*state, "extra")):
        row = ROW_MAGIC + marshal.dumps((other, record.bodies), 4)
        assert decode_row(row) is None
    assert decode_row(ROW_MAGIC + marshal.dumps((state, record.bodies), 4)) == record


async def test_rows_are_written_plain_and_read_back_equal(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), 1 << 30)
    try:
        small, large = os.urandom(KiB), os.urandom(100 * KiB)
        await store_body(store, "small", small, meta("/small"))
        await store_body(store, "large", large, meta("/large"))
        for key, body in (("small", small), ("large", large)):
            mode, value = raw_row(tmp_path / "cache", key)
            assert mode == 1 and value.startswith(ROW_MAGIC)  # diskcache's raw bytes
            now = store.get_now(key)  # on the event loop (the large one: gateway)
            entry = now if isinstance(now, StoredEntry) else await store.get(key)
            assert entry is not None and entry.meta == meta(f"/{key}")
            assert entry.bodies["identity"].checksum == body_checksum(body)
        assert store.inline_loads == 1 and store.gateway_loads == 1
    finally:
        await store.close()
    store = await DiskStore.open(str(tmp_path / "cache"), 1 << 30)
    try:
        assert sorted(await store.keys()) == ["large", "small"]
        assert [m for _k, m in await store.metas(["small"])] == [meta("/small")]
    finally:
        await store.close()


async def test_a_row_of_the_previous_release_still_reads(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), 1 << 30)
    body = os.urandom(KiB)
    old = _Record(meta("/old"), (("identity", body, KiB, body_checksum(body)),))
    store.index.set("old", old, tag=KiB)  # pickled, as the previous release wrote it
    await store.close()
    store = await DiskStore.open(str(tmp_path / "cache"), 1 << 30)
    try:
        assert raw_row(tmp_path / "cache", "old")[0] == 4  # diskcache's pickle mode
        entry = store.get_now("old")
        assert isinstance(entry, StoredEntry) and entry.meta == meta("/old")
        assert entry.bodies["identity"].data == body
        store.memory.discard("old")
        await store.put_meta("old", meta("/old", '"b"'))  # rewritten: the new format
        assert raw_row(tmp_path / "cache", "old")[1].startswith(ROW_MAGIC)
        store.memory.discard("old")
        again = await store.get("old")
        assert again is not None and again.meta == meta("/old", '"b"')
        assert again.bodies["identity"].data == body
    finally:
        await store.close()


async def test_a_damaged_row_is_dropped_and_a_damaged_body_in_it_counted(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), 1 << 30)
    dropped: list[str] = []
    store.on_corrupt = dropped.append
    try:
        bodies = {key: os.urandom(KiB) for key in ("cut", "flipped", "good")}
        for key, body in bodies.items():
            await store_body(store, key, body, meta(f"/{key}"))
        with contextlib.closing(sqlite3.connect(index_db(tmp_path / "cache"))) as db, db:
            (value,) = db.execute("SELECT value FROM Cache WHERE key = 'cut'").fetchone()
            db.execute("UPDATE Cache SET value = ? WHERE key = 'cut'", (value[:40],))
        corrupt_row_body(tmp_path / "cache", "flipped", bodies["flipped"])
        assert await store.get("cut") is None
        assert await store.get("flipped") is None
        assert dropped == ["flipped"]
        assert sorted(await store.keys()) == ["good"]
        good = await store.get("good")
        assert good is not None and good.bodies["identity"].data == bodies["good"]
    finally:
        await store.close()
