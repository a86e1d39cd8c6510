"""A hit on a small object outside the memory tier, on a real disk store: read on
the event loop (index row and body, no I/O gateway call) when every body is small,
cached and sound, and left to the gateway's reader whenever anything is unusual, so
a damaged body or an object another process removed is never served."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edge.scrub import scrub_once
from edge.store import (
    BodyRef,
    DiskStore,
    MemoryStore,
    MemoryTier,
    StoredEntry,
    body_checksum,
    io,
)
from edge.store.disk import SCRUB_OBJECT_MIN
from edge.store.disk_inline import INLINE_BODY_MAX, read_mode
from tests.support.waiting import eventually

KiB = 1024


async def stored(store: DiskStore, key: str, body: bytes) -> str:
    """Commit `body` under `key`, drop it from the memory tier; its file's path."""
    writer = store.begin(key)
    await writer.write(body)
    entry = await writer.commit({"meta": key})
    store.memory.discard(key)
    path = entry.bodies["identity"].path
    assert path is not None
    return path


async def test_a_small_disk_hit_needs_no_gateway_call(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30, row_body_max=0)
    try:
        assert store._inline.mode in ("nowait", "plain")  # ext4 or tmpfs
        bodies = {f"k{n}": os.urandom(KiB + n) for n in range(20)}
        for key, body in bodies.items():
            await stored(store, key, body)
        before, loads = io.calls, store.gateway_loads
        for key, body in bodies.items():
            assert store.peek(key) is None
            entry = await store.get(key)
            assert entry is not None and entry.meta == {"meta": key}
            ref = entry.bodies["identity"]
            assert ref.data == body and ref.checksum == body_checksum(body)
        assert await store.get("never-stored") is None
        assert io.calls == before and store.gateway_loads == loads
        assert store.inline_loads == len(bodies) + 1
        # now in the memory tier
        assert all(store.peek(key) is not None for key in bodies)
    finally:
        await store.close()


async def test_a_large_body_is_loaded_on_the_gateway(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30, row_body_max=0)
    try:
        body = os.urandom(INLINE_BODY_MAX + 1)
        await stored(store, "big", body)
        before = io.calls
        entry = await store.get("big")
        assert entry is not None and entry.bodies["identity"].data == body
        assert io.calls > before and store.gateway_loads == 1
    finally:
        await store.close()


async def test_a_corrupt_body_is_never_served_from_the_inline_path(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30, row_body_max=0)
    dropped: list[str] = []
    store.on_corrupt = dropped.append
    try:
        body = os.urandom(2 * KiB)
        path = await stored(store, "k", body)
        with open(path, "r+b") as f:  # one byte changed, same size
            f.seek(100)
            f.write(bytes([body[100] ^ 0xFF]))
        assert await store.get("k") is None
        assert dropped == ["k"] and store.corrupt_found == 1
        assert not os.path.exists(path)
        assert await store.get("k") is None
    finally:
        await store.close()


async def test_a_short_or_missing_body_file_is_absent(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30, row_body_max=0)
    try:
        short = await stored(store, "short", os.urandom(3 * KiB))
        os.truncate(short, KiB)
        gone = await stored(store, "gone", os.urandom(3 * KiB))
        os.unlink(gone)
        assert await store.get("short") is None
        assert await store.get("gone") is None
        assert await store.keys() == []  # both rows dropped by the gateway's reader
    finally:
        await store.close()


async def test_an_object_another_process_removed_is_not_served(tmp_path: Path) -> None:
    directory = str(tmp_path / "cache")
    one = await DiskStore.open(directory, max_bytes=1 << 30, row_body_max=0)
    two = await DiskStore.open(directory, max_bytes=1 << 30, memory_ttl=0.0, row_body_max=0)
    try:
        body = os.urandom(KiB)
        path = await stored(one, "k", body)
        entry = await two.get("k")
        assert entry is not None and entry.bodies["identity"].data == body
        await one.delete("k")
        assert not os.path.exists(path)
        assert await two.get("k") is None  # the other's memory tier has expired it
        replaced = os.urandom(KiB)
        await stored(one, "k", replaced)

        # stored again by the other: seen once this one syncs (`SYNC_INTERVAL`)
        async def found() -> bool:
            return await two.get("k") is not None

        await eventually(found, "the other's new row")
        again = await two.get("k")
        assert again is not None and again.bodies["identity"].data == replaced
        assert two.gateway_loads == 0
    finally:
        await two.close()
        await one.close()


def test_the_read_mode_of_this_filesystem(tmp_path: Path) -> None:
    # a filesystem with RWF_NOWAIT (ext4, xfs, btrfs) reads inline only from the
    # page cache; tmpfs has none, and every read of it is from memory
    assert read_mode(str(tmp_path)) in ("nowait", "plain")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".nowait-probe")]


def test_the_memory_tier_tells_who_listens_when_an_entry_leaves() -> None:
    # the hot lane drops its prepared answers of a key then (tests/e2e/test_store_memory.py)
    tier = MemoryTier(max_bytes=3 * 2000)
    dropped: list[str] = []
    tier.on_drop.append(dropped.append)

    def entry(key: str) -> StoredEntry:
        return StoredEntry(key, None, {"identity": BodyRef("identity", 1000, b"x" * 1000, None)})

    for key in ("a", "b", "c"):
        tier.put(entry(key))
    assert dropped == [] and len(tier) == 3
    tier.put(entry("d"))  # over the bound: the least recently used goes
    assert dropped == ["a"]
    tier.discard("c")
    tier.put(entry("b"))  # replaced
    assert dropped == ["a", "c", "b"] and len(tier) == 2


async def test_the_scrubber_paces_small_objects_per_object(tmp_path: Path) -> None:
    # a byte rate alone let it make tens of thousands of gateway calls a second over a
    # store of small objects; each object now counts as SCRUB_OBJECT_MIN bytes at least
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30, row_body_max=0)
    try:
        for n in range(20):
            await stored(store, f"k{n}", os.urandom(KiB))
        rate = SCRUB_OBJECT_MIN * 100  # at most 100 objects a second
        started = time.monotonic()
        assert await scrub_once(store, rate) == 20 * KiB
        assert time.monotonic() - started >= 20 / 100 * 0.95
        assert store.corrupt_found == 0
    finally:
        await store.close()


async def test_keys_come_a_page_at_a_time(tmp_path: Path) -> None:
    # the scrubber reads keys a page at a time instead of holding a list of them all
    disk = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30, row_body_max=0)
    memory = MemoryStore(max_bytes=1 << 30)
    try:
        for store in (disk, memory):
            for n in range(5):
                writer = store.begin(f"k{n}")
                await writer.write(b"x")
                await writer.commit({"meta": n})
            await store.put_meta("vary-index", {"meta": "no body"})
            pages, cursor = [], 0
            while True:
                page, cursor = await store.keys_page(cursor, 2)
                if not page:
                    break
                pages.append(page)
            assert pages == [["k0", "k1"], ["k2", "k3"], ["k4", "vary-index"]]
        # every body read back, across the pages (a memory store has none to read)
        assert await scrub_once(disk, SCRUB_OBJECT_MIN * 1000) == 5
    finally:
        await disk.close()
