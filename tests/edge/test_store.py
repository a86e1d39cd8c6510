"""The object store contract, run against DiskStore and MemoryStore alike.

The tests after the contract are DiskStore's own: what survives a restart, what a
killed writer leaves behind (a real child process, SIGKILLed mid-write), and what a
damaged directory looks like to a reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickletools
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.store import (
    BodyGone,
    BodyRef,
    DiskStore,
    MemoryStore,
    ObjectStore,
    StoreError,
    read_body,
)

REPO = Path(__file__).resolve().parents[2]
KiB = 1024


async def store_body(
    store: ObjectStore, key: str, body: bytes, meta: object = "meta", encoding: str = "identity"
) -> None:
    """Write `body` in uneven chunks and commit it."""
    writer = store.begin(key, encoding)
    for pos in range(0, len(body), 7000):
        await writer.write(body[pos : pos + 7000])
    await writer.commit(meta)


async def read_all(ref: BodyRef, start: int = 0, end: int | None = None) -> bytes:
    """The bytes of a stored body, read the way the engine reads them."""
    return b"".join([chunk async for chunk in read_body(ref, start, end, chunk_size=4096)])


@pytest.fixture(params=["disk", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """Each implementation of the seam, bounded to 1 MiB of bodies."""
    made: ObjectStore
    if request.param == "disk":
        made = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1024 * KiB)
    else:
        made = MemoryStore(max_bytes=1024 * KiB, tmp_dir=str(tmp_path))
    yield made
    await made.close()


# --------------------------------------------------------------------------- contract


async def test_committed_body_is_returned_whole(store: ObjectStore) -> None:
    body = os.urandom(100 * KiB)
    await store_body(store, "k", body, meta={"status": 200})
    entry = await store.get("k")
    assert entry is not None
    assert entry.meta == {"status": 200}
    assert set(entry.bodies) == {"identity"}
    assert entry.bodies["identity"].size == len(body)
    assert await read_all(entry.bodies["identity"]) == body
    assert store.size_bytes == len(body)


async def test_ranges_read_only_the_asked_bytes(store: ObjectStore) -> None:
    body = bytes(range(256)) * 100
    await store_body(store, "k", body)
    entry = await store.get("k")
    assert entry is not None
    ref = entry.bodies["identity"]
    assert await read_all(ref, 10, 20) == body[10:20]
    assert await read_all(ref, 5000) == body[5000:]
    assert await read_all(ref, len(body) - 1, len(body) + 100) == body[-1:]
    assert await read_all(ref, 300, 300) == b""


async def test_empty_body_commits(store: ObjectStore) -> None:
    await store_body(store, "empty", b"")
    entry = await store.get("empty")
    assert entry is not None
    assert entry.bodies["identity"].size == 0
    assert await read_all(entry.bodies["identity"]) == b""


async def test_aborted_fill_is_never_visible(store: ObjectStore) -> None:
    writer = store.begin("k")
    await writer.write(b"x" * 100 * KiB)
    await writer.abort()
    assert store.peek("k") is None
    assert await store.get("k") is None
    assert await store.keys() == []
    assert not os.path.exists(writer.path)
    assert store.size_bytes == 0
    with pytest.raises(StoreError):
        await writer.commit("late")


async def test_uncommitted_writer_leaves_no_entry(store: ObjectStore) -> None:
    writer = store.begin("k")
    await writer.write(b"partial")
    await writer.flush()
    assert await store.get("k") is None
    assert store.peek("k") is None
    await writer.abort()


async def test_commit_replaces_the_older_entry(store: ObjectStore) -> None:
    await store_body(store, "k", b"old" * 1000, meta=1)
    old = await store.get("k")
    assert old is not None
    await store_body(store, "k", b"new" * 500, meta=2)
    entry = await store.get("k")
    assert entry is not None
    assert entry.meta == 2
    assert await read_all(entry.bodies["identity"]) == b"new" * 500
    assert store.size_bytes == 1500
    assert await store.keys() == ["k"]
    old_path = old.bodies["identity"].path
    if old_path is not None:
        assert not os.path.exists(old_path)


async def test_add_encoding_stores_a_second_body(store: ObjectStore) -> None:
    await store_body(store, "k", b"a" * 5000)
    src = store.tmp_path(".gz")
    Path(src).write_bytes(b"gzipped-bytes")
    ref = await store.add_encoding("k", "gzip", src)
    assert ref is not None
    assert ref.encoding == "gzip"
    assert ref.size == len(b"gzipped-bytes")
    assert not os.path.exists(src)
    entry = await store.get("k")
    assert entry is not None
    assert set(entry.bodies) == {"identity", "gzip"}
    assert await read_all(entry.bodies["gzip"]) == b"gzipped-bytes"
    assert await read_all(entry.bodies["identity"]) == b"a" * 5000
    assert store.size_bytes == 5000 + len(b"gzipped-bytes")


async def test_add_encoding_to_a_gone_entry_returns_none(store: ObjectStore) -> None:
    src = store.tmp_path(".br")
    Path(src).write_bytes(b"br-bytes")
    assert await store.add_encoding("missing", "br", src) is None
    assert not os.path.exists(src)
    assert await store.get("missing") is None


async def test_put_meta_on_an_entry_keeps_its_bodies(store: ObjectStore) -> None:
    await store_body(store, "k", b"body" * 100, meta="before")
    assert await store.get("k") is not None
    await store.put_meta("k", "after")
    for entry in (store.peek("k"), await store.get("k")):
        assert entry is not None
        assert entry.meta == "after"
        assert await read_all(entry.bodies["identity"]) == b"body" * 100


async def test_put_meta_on_a_new_key_is_a_metadata_only_record(store: ObjectStore) -> None:
    await store.put_meta("vary-index", ("accept-encoding",))
    entry = await store.get("vary-index")
    assert entry is not None
    assert entry.meta == ("accept-encoding",)
    assert dict(entry.bodies) == {}
    assert await store.keys() == ["vary-index"]


async def test_least_recently_used_is_evicted_over_the_bound(store: ObjectStore) -> None:
    # the bound is 1 MiB: three 300 KiB bodies fit, a fourth does not
    for key in ("a", "b", "c"):
        await store_body(store, key, os.urandom(300 * KiB))
    assert await store.get("a") is not None  # a is now more recent than b
    await store_body(store, "d", os.urandom(300 * KiB))
    assert await store.get("b") is None
    assert store.peek("b") is None
    for key in ("a", "c", "d"):
        assert await store.get(key) is not None, key
    assert store.size_bytes == 900 * KiB
    assert sorted(await store.keys()) == ["a", "c", "d"]


async def test_a_hit_after_get_is_served_from_memory(store: ObjectStore) -> None:
    body = b"hot" * 1000
    await store_body(store, "hot", body)
    assert await store.get("hot") is not None
    entry = store.peek("hot")
    assert entry is not None
    assert entry.bodies["identity"].data == body


async def test_delete_removes_entry_and_bytes(store: ObjectStore) -> None:
    await store_body(store, "k", b"z" * 3000)
    entry = await store.get("k")
    assert entry is not None
    await store.delete("k")
    assert store.peek("k") is None
    assert await store.get("k") is None
    assert store.size_bytes == 0
    await store.delete("k")  # deleting what is absent is no error
    path = entry.bodies["identity"].path
    if path is not None:
        assert not os.path.exists(path)


async def test_a_reader_can_tail_a_growing_body(store: ObjectStore) -> None:
    writer = store.begin("k")
    await writer.write(b"first")
    assert await writer.wait_written(0) == 5  # the delayed flush reaches the file
    with open(writer.path, "rb") as f:
        assert f.read() == b"first"
    waiter = asyncio.ensure_future(writer.wait_written(5))
    await writer.write(b"-second")
    assert await waiter == len(b"first-second")
    await writer.commit("m")
    assert await writer.wait_written(100) == len(b"first-second")


async def test_concurrent_fills_of_many_keys(store: ObjectStore) -> None:
    bodies = {f"k{i}": os.urandom(1000 + i) for i in range(40)}
    await asyncio.gather(*(store_body(store, k, b) for k, b in bodies.items()))
    for key, body in bodies.items():
        entry = await store.get(key)
        assert entry is not None
        assert await read_all(entry.bodies["identity"]) == body
    assert sorted(await store.keys()) == sorted(bodies)


# --------------------------------------------------------------------------- disk only


async def open_disk(path: Path, **kwargs: int) -> DiskStore:
    return await DiskStore.open(
        str(path / "cache"), max_bytes=kwargs.pop("max_bytes", 1 << 30), **kwargs
    )


async def test_restart_keeps_committed_entries(tmp_path: Path) -> None:
    small, large = b"s" * 2000, os.urandom(600 * KiB)
    store = await open_disk(tmp_path)
    await store_body(store, "small", small, meta="m1")
    await store_body(store, "large", large, meta="m2")
    await store.put_meta("vary", "index")
    await store.close()

    store = await open_disk(tmp_path)
    try:
        assert store.size_bytes == len(small) + len(large)
        assert store.peek("small") is None  # memory starts empty
        entry = await store.get("small")
        assert entry is not None
        assert entry.meta == "m1"
        assert await read_all(entry.bodies["identity"]) == small
        peeked = store.peek("small")  # promoted by the get
        assert peeked is not None
        assert peeked.bodies["identity"].data == small
        big = await store.get("large")
        assert big is not None
        assert big.bodies["identity"].data is None  # too large for the memory tier
        assert await read_all(big.bodies["identity"]) == large
        vary = await store.get("vary")
        assert vary is not None
        assert vary.meta == "index"
        assert sorted(await store.keys()) == ["large", "small", "vary"]
    finally:
        await store.close()


async def test_bound_is_enforced_on_what_was_stored_before_a_restart(tmp_path: Path) -> None:
    store = await open_disk(tmp_path)
    for key in ("a", "b", "c"):
        await store_body(store, key, os.urandom(100 * KiB))
    await store.close()
    store = await open_disk(tmp_path, max_bytes=250 * KiB)
    try:
        assert store.size_bytes <= 250 * KiB
        assert len(await store.keys()) == 2
    finally:
        await store.close()


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from edge.store import DiskStore

    async def main():
        store = await DiskStore.open(sys.argv[1], max_bytes=1 << 30)
        done = store.begin("done")
        await done.write(b"d" * 1000)
        await done.commit("complete")
        half = store.begin("half")
        await half.write(b"x" * 300_000)
        await half.flush()
        print(half.path, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_a_killed_writer_leaves_nothing_visible(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(directory)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        temp_path = child.stdout.readline().decode().strip()
        assert os.path.getsize(temp_path) == 300_000
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert os.path.exists(temp_path)  # the killed process could not clean up

    store = await DiskStore.open(str(directory), max_bytes=1 << 30)
    try:
        assert not os.path.exists(temp_path)
        assert not os.path.exists(os.path.dirname(temp_path))
        assert await store.get("half") is None
        assert await store.keys() == ["done"]
        entry = await store.get("done")
        assert entry is not None
        assert await read_all(entry.bodies["identity"]) == b"d" * 1000
        assert store.size_bytes == 1000
    finally:
        await store.close()


async def test_opening_a_second_store_spares_a_live_writer(tmp_path: Path) -> None:
    first = await open_disk(tmp_path)
    writer = first.begin("k")
    await writer.write(b"live" * 100)
    await writer.flush()
    second = await open_disk(tmp_path)
    try:
        assert os.path.exists(writer.path)
        await writer.commit("m")
        entry = await second.get("k")
        assert entry is not None
        assert await read_all(entry.bodies["identity"]) == b"live" * 100
    finally:
        await second.close()
        await first.close()


async def test_an_index_row_without_its_file_is_absent(tmp_path: Path) -> None:
    store = await open_disk(tmp_path, row_body_max=0)
    await store_body(store, "k", b"q" * 5000)
    entry = await store.get("k")
    assert entry is not None
    path = entry.bodies["identity"].path
    assert path is not None
    await store.close()
    os.unlink(path)

    store = await open_disk(tmp_path, row_body_max=0)
    try:
        assert await store.get("k") is None
        assert await store.keys() == []  # the row was deleted
        assert store.size_bytes == 0
    finally:
        await store.close()


async def test_a_truncated_body_file_is_absent(tmp_path: Path) -> None:
    store = await open_disk(tmp_path)
    try:
        body = os.urandom(400 * KiB)
        await store_body(store, "k", body)
        entry = store.peek("k")
        assert entry is not None
        ref = entry.bodies["identity"]
        assert ref.path is not None
        os.truncate(ref.path, 1000)
        with pytest.raises(BodyGone):
            await read_all(ref)
        store.memory.discard("k")
        assert await store.get("k") is None
    finally:
        await store.close()


async def test_reading_an_evicted_body_raises_body_gone(tmp_path: Path) -> None:
    store = await open_disk(tmp_path, max_bytes=500 * KiB)
    try:
        await store_body(store, "a", os.urandom(300 * KiB))
        entry = await store.get("a")
        assert entry is not None
        await store_body(store, "b", os.urandom(300 * KiB))  # evicts a
        with pytest.raises(BodyGone):
            await read_all(entry.bodies["identity"])
    finally:
        await store.close()


async def test_a_body_already_open_survives_its_eviction(tmp_path: Path) -> None:
    store = await open_disk(tmp_path, max_bytes=500 * KiB)
    try:
        body = os.urandom(300 * KiB)
        await store_body(store, "a", body)
        entry = await store.get("a")
        assert entry is not None
        reader = read_body(entry.bodies["identity"], chunk_size=64 * KiB)
        first = await anext(reader)
        await store_body(store, "b", os.urandom(300 * KiB))  # evicts a mid-read
        rest = b"".join([chunk async for chunk in reader])
        assert first + rest == body
    finally:
        await store.close()


async def test_two_workers_on_one_directory_share_the_byte_total(tmp_path: Path) -> None:
    first = await open_disk(tmp_path, max_bytes=700 * KiB)
    second = await open_disk(tmp_path, max_bytes=700 * KiB)
    try:
        await store_body(first, "a", os.urandom(300 * KiB))
        await store_body(second, "b", os.urandom(300 * KiB))
        assert second.size_bytes == 600 * KiB  # counts the first worker's body too
        await store_body(first, "c", os.urandom(300 * KiB))  # over: first evicts its LRU, a
        assert first.size_bytes == 600 * KiB
        assert sorted(await second.keys()) == ["b", "c"]
        assert await second.get("a") is None
    finally:
        await second.close()
        await first.close()
    reopened = await open_disk(tmp_path)
    try:
        assert reopened.size_bytes == 600 * KiB
    finally:
        await reopened.close()


async def test_a_worker_sees_another_workers_delete_once_its_memory_expires(
    tmp_path: Path,
) -> None:
    directory = str(tmp_path / "cache")
    # memory_ttl=0: every memory entry has expired by the next lookup
    first = await DiskStore.open(directory, max_bytes=1 << 30, memory_ttl=0.0)
    second = await DiskStore.open(directory, max_bytes=1 << 30)
    try:
        await store_body(first, "k", b"v" * 100)
        assert await first.get("k") is not None
        await second.delete("k")
        assert first.peek("k") is None
        assert await first.get("k") is None
    finally:
        await second.close()
        await first.close()


def _unloadable() -> object:
    raise AttributeError("the metadata class of this row no longer exists")


class MetaOfAnOlderRelease:
    """Metadata that pickles but no longer unpickles (as after a class was renamed)."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_unloadable, ())


async def test_an_unreadable_index_row_is_dropped_not_fatal(tmp_path: Path) -> None:
    store = await open_disk(tmp_path)
    await store_body(store, "old", b"o" * 100, meta=MetaOfAnOlderRelease())
    await store_body(store, "good", b"g" * 100, meta="fine")
    await store.close()

    store = await open_disk(tmp_path)
    try:
        assert await store.get("old") is None
        assert await store.keys() == ["good"]
        entry = await store.get("good")
        assert entry is not None
        assert entry.meta == "fine"
    finally:
        await store.close()


async def test_added_encodings_survive_a_restart(tmp_path: Path) -> None:
    store = await open_disk(tmp_path)
    await store_body(store, "k", b"i" * 1000)
    src = store.tmp_path(".br")
    Path(src).write_bytes(b"compressed")
    assert await store.add_encoding("k", "br", src) is not None
    await store.close()

    store = await open_disk(tmp_path)
    try:
        entry = await store.get("k")
        assert entry is not None
        assert {e: await read_all(r) for e, r in entry.bodies.items()} == {
            "identity": b"i" * 1000,
            "br": b"compressed",
        }
        assert store.size_bytes == 1000 + len(b"compressed")
    finally:
        await store.close()


async def test_small_bodies_are_held_in_memory_beside_a_large_one(tmp_path: Path) -> None:
    store = await open_disk(tmp_path)
    try:
        large = os.urandom(400 * KiB)
        await store_body(store, "k", large)
        src = store.tmp_path(".br")
        Path(src).write_bytes(b"small variant")
        await store.add_encoding("k", "br", src)
        entry = store.peek("k")
        assert entry is not None
        assert entry.bodies["br"].data == b"small variant"  # a hot br hit needs no disk
        assert entry.bodies["identity"].data is None
        store.memory.discard("k")
        reloaded = await store.get("k")
        assert reloaded is not None
        assert reloaded.bodies["br"].data == b"small variant"
        assert reloaded.bodies["identity"].data is None
        assert await read_all(reloaded.bodies["identity"]) == large
    finally:
        await store.close()


def pickled_globals(data: bytes) -> set[str]:
    """The `module.name` of every class a pickle refers to."""
    names: set[str] = set()
    strings: list[str] = []
    for opcode, arg, _pos in pickletools.genops(data):
        if isinstance(arg, str):
            strings.append(arg)
        if opcode.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
        elif opcode.name in ("GLOBAL", "INST"):
            names.add(str(arg).replace(" ", "."))
    return names


async def test_index_rows_name_the_record_class_as_earlier_releases_did(tmp_path: Path) -> None:
    """A row is pickled as `edge.store._Record` (the module before the store became a
    package), so a directory written by either release is read by the other."""
    store = await open_disk(tmp_path)
    await store_body(store, "k", b"v" * 100, meta="m")
    await store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "cache" / "index" / "cache.db")) as db:
        (raw,) = db.execute("SELECT value FROM Cache WHERE key = ?", ("k",)).fetchone()
    assert "edge.store._Record" in pickled_globals(raw)

    store = await open_disk(tmp_path)
    try:
        entry = await store.get("k")
        assert entry is not None
        assert entry.meta == "m"
    finally:
        await store.close()
