"""Opening a disk store: what it reads (one scan of key and size), what it sweeps
(orphan bodies, only after a store died), and the recency order it starts with."""

from __future__ import annotations

import os
import time
from pathlib import Path

import diskcache

from edge.store import DiskStore, ObjectStore
from edge.store.disk_index import ORPHAN_GRACE, _Record

KiB = 1024


async def store_body(store: ObjectStore, key: str, body: bytes) -> None:
    writer = store.begin(key)
    await writer.write(body)
    await writer.commit({"key": key})


def make_orphan(directory: Path) -> Path:
    """A body file no row names, old enough for the sweep."""
    orphan = directory / "bodies" / "ff" / "ff" / "orphan.identity"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x" * 100)
    old = time.time() - ORPHAN_GRACE - 60
    os.utime(orphan, (old, old))
    return orphan


async def test_orphans_are_swept_when_a_store_died(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = await DiskStore.open(str(directory), max_bytes=1 << 30)
    await store_body(store, "kept", b"k" * KiB)
    await store.close()
    orphan = make_orphan(directory)
    # what a killed store leaves: its temp directory, its lock free
    dead = directory / "tmp" / "12345-deadbeef"
    dead.mkdir(parents=True)
    (dead / ".lock").write_bytes(b"")
    reopened = await DiskStore.open(str(directory), max_bytes=1 << 30)
    try:
        assert not orphan.exists()
        assert not dead.exists()
        assert await reopened.get("kept") is not None
    finally:
        await reopened.close()


async def test_a_clean_restart_does_not_walk_the_bodies(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = await DiskStore.open(str(directory), max_bytes=1 << 30)
    await store_body(store, "kept", b"k" * KiB)
    await store.close()
    orphan = make_orphan(directory)  # not made by a store of ours: no store died
    reopened = await DiskStore.open(str(directory), max_bytes=1 << 30)
    try:
        assert orphan.exists()
        assert await reopened.get("kept") is not None
        assert reopened.size_bytes == KiB
    finally:
        await reopened.close()


async def test_recency_after_a_restart_follows_the_order_of_storing(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = await DiskStore.open(str(directory), max_bytes=1 << 30)
    # stored in an order unlike the keys' sort order
    for key in ("m", "z", "a", "q"):
        await store_body(store, key, os.urandom(100 * KiB))
    await store.close()
    # room for three: opening evicts the one stored first
    reopened = await DiskStore.open(str(directory), max_bytes=300 * KiB)
    try:
        assert sorted(await reopened.keys()) == ["a", "q", "z"]
        assert reopened.size_bytes == 300 * KiB
    finally:
        await reopened.close()


async def test_rows_of_an_earlier_release_without_a_size_tag_are_counted(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cache"
    store = await DiskStore.open(str(directory), max_bytes=1 << 30)
    await store_body(store, "new", b"n" * KiB)
    entry = await store.get("new")
    assert entry is not None
    await store.close()
    # a row as an earlier release wrote it: no tag, 3-tuple bodies
    body = directory / "bodies" / "aa" / "bb" / "old.identity"
    body.parent.mkdir(parents=True, exist_ok=True)
    body.write_bytes(b"o" * (2 * KiB))
    index = diskcache.Cache(str(directory / "index"), eviction_policy="none")
    index.set("old", _Record("meta", (("identity", "bodies/aa/bb/old.identity", 2 * KiB),)))  # type: ignore[arg-type]
    index.incr(("edgeshield", "body-bytes"), 2 * KiB)
    index.close()
    reopened = await DiskStore.open(str(directory), max_bytes=2 * KiB)  # room for "old" only
    try:
        assert sorted(await reopened.keys()) == ["old"]  # "new" was stored first: evicted
        assert reopened.size_bytes == 2 * KiB
    finally:
        await reopened.close()
