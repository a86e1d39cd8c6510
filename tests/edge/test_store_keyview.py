"""A store's view of the keys in its index: a key it does not know is absent without
an index lookup, and the keys other processes sharing the directory store reach
that view within `SYNC_INTERVAL` (`DiskStore._sync`). Two real `DiskStore`s on one
real directory stand for two workers of a node."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.store import DiskStore, StoredEntry, io
from edge.store.disk import SYNC_INTERVAL
from tests.support.waiting import eventually

KiB = 1024


async def stored(store: DiskStore, key: str, body: bytes) -> None:
    """Commit `body` under `key`."""
    writer = store.begin(key)
    await writer.write(body)
    await writer.commit({"meta": key})


async def has(store: DiskStore, key: str) -> bool:
    """Whether `store` finds `key`."""
    return await store.get(key) is not None


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[tuple[DiskStore, DiskStore]]:
    """Two stores on one directory; the second trusts its memory tier for no time,
    so each of its lookups of a key it knows reads the index."""
    directory = str(tmp_path / "cache")
    one = await DiskStore.open(directory, max_bytes=1 << 30)
    two = await DiskStore.open(directory, max_bytes=1 << 30, memory_ttl=0.0)
    try:
        yield one, two
    finally:
        await two.close()
        await one.close()


async def test_a_key_another_worker_stores_is_seen_after_a_sync(
    workers: tuple[DiskStore, DiskStore],
) -> None:
    one, two = workers
    assert await two.get("k") is None
    body = os.urandom(KiB)
    await stored(one, "k", body)
    await eventually(lambda: has(two, "k"), "the other worker's key")
    entry = await two.get("k")
    assert entry is not None and entry.bodies["identity"].data == body
    assert two.syncs >= 1 and two.gateway_loads == 0


async def test_an_absent_key_costs_no_sql(workers: tuple[DiskStore, DiskStore]) -> None:
    one, two = workers
    for n in range(10):
        await stored(one, f"k{n}", os.urandom(KiB))
    await eventually(lambda: has(two, "k9"), "the other worker's keys")
    statements: list[str] = []
    connection = two._inline._connection()
    connection.set_trace_callback(statements.append)
    try:
        calls, syncs, absent = io.calls, two.syncs, two.absent_known
        for n in range(200):
            assert await two.get(f"absent-{n}") is None
    finally:
        connection.set_trace_callback(None)
    assert not [sql for sql in statements if "key =" in sql]  # no lookup
    assert two.absent_known == absent + 200
    assert io.calls == calls  # nothing on the gateway either
    # the only statements are the syncs that fell due meanwhile (one per 5 ms at
    # most), each a read of the newest rows: never the lookup of a key
    assert len(statements) == two.syncs - syncs
    assert all("rowid >" in sql and "key =" not in sql for sql in statements)
    # a key this worker knows is still looked up
    assert await two.get("k3") is not None


async def test_a_key_the_other_worker_deletes_is_found_absent_and_forgotten(
    workers: tuple[DiskStore, DiskStore],
) -> None:
    one, two = workers
    await stored(one, "k", os.urandom(KiB))
    await eventually(lambda: has(two, "k"), "the other worker's key")
    await one.delete("k")
    inline, absent = two.inline_loads, two.absent_known
    assert await two.get("k") is None  # looked up: the row is gone
    assert two.inline_loads == inline + 1 and two.absent_known == absent
    assert await two.get("k") is None  # forgotten: absent without a lookup
    assert two.absent_known == absent + 1


async def test_a_reused_rowid_does_not_hide_a_row(
    workers: tuple[DiskStore, DiskStore],
) -> None:
    # SQLite gives a new row the largest row id plus one: when the row holding the
    # largest goes, the next row would get its id again, below what a sync has read
    one, two = workers
    await stored(one, "a", os.urandom(KiB))
    await stored(one, "b", os.urandom(KiB))
    await eventually(lambda: has(two, "b"), "the other worker's keys")
    index = sqlite3.connect(os.path.join(one.directory, "index", "cache.db"))
    try:
        (rowid_b,) = index.execute("SELECT rowid FROM Cache WHERE key = 'b'").fetchone()
        await one.delete("b")  # the row with the largest id
        await stored(one, "c", os.urandom(KiB))
        (rowid_c,) = index.execute("SELECT rowid FROM Cache WHERE key = 'c'").fetchone()
    finally:
        index.close()
    await eventually(lambda: has(two, "c"), "the row stored after the largest went", timeout=5)
    assert rowid_c > rowid_b


async def test_a_worker_evicts_the_objects_other_workers_stored(tmp_path: Path) -> None:
    directory = str(tmp_path / "cache")
    one = await DiskStore.open(directory, max_bytes=700 * KiB)
    two = await DiskStore.open(directory, max_bytes=700 * KiB)
    try:
        await stored(one, "a", os.urandom(300 * KiB))
        await stored(one, "b", os.urandom(300 * KiB))

        async def knows_b() -> bool:
            await two.get("unknown")  # a sync, once one is due
            return "b" in two._lru

        await eventually(knows_b, "the other worker's keys")
        await stored(two, "c", os.urandom(300 * KiB))  # over the bound: two evicts a
        assert two.size_bytes == 600 * KiB
        assert sorted(await two.keys()) == ["b", "c"]
    finally:
        await two.close()
        await one.close()


async def test_a_row_read_ahead_by_get_now_is_not_served_once_it_is_old(tmp_path: Path) -> None:
    """`get_now` keeps what it read from disk for the `get` of the same request that
    follows; kept past `SYNC_INTERVAL`, it would hide a row another worker replaced
    since (and hold a body the memory tier does not account for)."""
    directory = str(tmp_path / "cache")
    one = await DiskStore.open(directory, max_bytes=1 << 30)
    two = await DiskStore.open(directory, max_bytes=1 << 30, memory_bytes=0)
    try:
        first, second = os.urandom(KiB), os.urandom(KiB)
        await stored(one, "k", first)

        async def read_ahead() -> bool:
            found = two.get_now("k")
            return isinstance(found, StoredEntry) and found.bodies["identity"].data == first

        await eventually(read_ahead, "the other worker's key, read without waiting")
        await stored(one, "k", second)
        await asyncio.sleep(SYNC_INTERVAL * 2)  # the clock, not background work
        entry = await two.get("k")
        assert entry is not None and entry.bodies["identity"].data == second
    finally:
        await two.close()
        await one.close()
