"""Small bodies kept in their index rows, on a real disk store.

A body of at most `ROW_BODY_MAX` bytes is stored inside its `_Record` row, committed
by the row's own transaction: no body file, no rename, no orphan possible, and a disk
hit opens no file. Larger bodies stay files. Rows of the previous release (bodies as
files, and the older 3-tuples) still read; the byte bound counts row bodies as it
counts files; a body damaged in its row is found by every reader and the scrubber,
dropped and counted, never served.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import brotli
import pytest

from edge.compress import make_variants
from edge.scrub import scrub_once
from edge.store import ROW_BODY_MAX, BodyRef, DiskStore, _Record, body_checksum, io, read_body
from tests.support.row_bodies import body_files, corrupt_row_body

REPO = Path(__file__).resolve().parents[2]
KiB = 1024

#: (event, path) of audited opens under the recording root while a test records
_opened: list[tuple[str, str]] | None = None
_root = ""


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _opened is None or event != "open" or not args:
        return
    path = args[0]
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, str) and path.startswith(_root):
        _opened.append((event, f"{path} ({threading.current_thread().name})"))


sys.addaudithook(_audit)  # hooks cannot be removed; inert unless a test records


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[list[tuple[str, str]]]:
    """Files opened under `tmp_path` while the test runs (PEP 578 audit events)."""
    global _opened, _root
    _root, _opened = str(tmp_path), []
    try:
        yield _opened
    finally:
        _opened = None


def text_body(size: int, seed: int) -> bytes:
    """Compressible text that is not a repetition of one line."""
    words = [b"cache", b"edge", b"shield", b"origin", b"purge", b"vary", b"stale", b"fresh"]
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=16)) + b"\n"
    return bytes(out[:size])


async def commit(store: DiskStore, key: str, body: bytes, slow: bool = False) -> BodyRef:
    """Store `body` under `key`; `slow`: part of it reaches its temp file first, as
    a body that trickles in does."""
    writer = store.begin(key)
    if slow:
        await writer.write(body[:100])
        await writer.flush()
        await writer.write(body[100:])
    else:
        await writer.write(body)
    entry = await writer.commit({"key": key})
    return entry.bodies["identity"]


async def read_all(ref: BodyRef) -> bytes:
    return b"".join([chunk async for chunk in read_body(ref)])


async def open_store(directory: Path, **kwargs: int) -> DiskStore:
    return await DiskStore.open(
        str(directory), max_bytes=kwargs.pop("max_bytes", 1 << 30), **kwargs
    )


async def test_a_small_fill_leaves_no_body_file_and_a_big_one_does(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = await open_store(directory)
    small, edge, trickled = os.urandom(KiB), os.urandom(ROW_BODY_MAX), os.urandom(5 * KiB)
    big = os.urandom(ROW_BODY_MAX + 1)
    try:
        for key, body, slow in (
            ("small", small, False),
            ("edge", edge, False),
            ("trickled", trickled, True),
        ):
            ref = await commit(store, key, body, slow)
            assert ref.path is None and ref.data == body
            assert ref.checksum == body_checksum(body)
        assert body_files(directory) == []
        # the trickled body's temp file went once its row was in
        assert os.listdir(store._tmp_dir) == [".lock"]
        ref = await commit(store, "big", big)
        assert ref.path is not None and Path(ref.path).read_bytes() == big
        assert body_files(directory) == [Path(ref.path)]
        assert store.size_bytes == len(small) + len(edge) + len(trickled) + len(big)
    finally:
        await store.close()

    reopened = await open_store(directory)
    try:
        for key, body in (("small", small), ("edge", edge), ("trickled", trickled)):
            entry = await reopened.get(key)
            assert entry is not None and entry.meta == {"key": key}
            ref = entry.bodies["identity"]
            assert ref.path is None and ref.data == body and await read_all(ref) == body
        entry = await reopened.get("big")
        assert entry is not None and entry.bodies["identity"].path is not None
        assert await read_all(entry.bodies["identity"]) == big
        assert reopened.size_bytes == len(small) + len(edge) + len(trickled) + len(big)
    finally:
        await reopened.close()


async def test_a_hit_on_a_small_object_opens_no_file(
    tmp_path: Path, opened: list[tuple[str, str]]
) -> None:
    store = await open_store(tmp_path / "cache")
    try:
        bodies = {f"k{n}": os.urandom(KiB + n) for n in range(20)}
        for key, body in bodies.items():
            await commit(store, key, body)
        await store.get("never-stored")  # the inline reader's connection is made
        for key in bodies:
            store.forget_cached(key)
        opened.clear()
        calls, gateway = io.calls, store.gateway_loads
        for key, body in bodies.items():
            entry = await store.get(key)
            assert entry is not None and entry.bodies["identity"].data == body
        assert opened == []  # neither a body file nor anything else
        assert io.calls == calls and store.gateway_loads == gateway
        # the gateway's reader opens none either
        store._inline.mode = "off"
        for key in bodies:
            store.forget_cached(key)
            entry = await store.get(key)
            assert entry is not None and entry.bodies["identity"].data == bodies[key]
        assert store.gateway_loads == gateway + len(bodies)
        assert opened == []
    finally:
        await store.close()


async def test_a_store_of_the_previous_release_opens_and_serves(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    # `row_body_max=0` writes rows as the previous release did: every body a file
    old = await open_store(directory, row_body_max=0)
    bodies = {f"old{n}": os.urandom(KiB * (n + 1)) for n in range(5)}
    for key, body in bodies.items():
        await commit(old, key, body)
    legacy = await commit(old, "legacy", b"stored before checksums")
    assert legacy.path is not None
    # and the older form still: (encoding, path, size), no checksum
    rel = os.path.relpath(legacy.path, directory)
    old.index.set("legacy", _Record("meta", (("identity", rel, legacy.size),)))  # type: ignore[arg-type]
    await old.close()
    assert len(body_files(directory)) == 6

    store = await open_store(directory)
    try:
        assert sorted(await store.keys()) == sorted([*bodies, "legacy"])
        for key, body in bodies.items():
            entry = await store.get(key)
            assert entry is not None
            ref = entry.bodies["identity"]
            assert ref.path is not None and ref.data == body
        entry = await store.get("legacy")
        assert entry is not None and entry.bodies["identity"].data == b"stored before checksums"
        assert entry.bodies["identity"].checksum is None
        assert await scrub_once(store, 1 << 30) == sum(map(len, bodies.values()))
        assert store.corrupt_found == 0
        # a new body for an old key goes into the row; the old file goes
        await commit(store, "old0", b"replaced")
        assert len(body_files(directory)) == 5
        await store.delete("old1")
        assert len(body_files(directory)) == 4
        assert store.size_bytes == len(b"replaced") + sum(
            len(bodies[key]) for key in ("old2", "old3", "old4")
        ) + len(b"stored before checksums")
    finally:
        await store.close()


async def test_compressed_variants_of_a_small_body_are_kept_in_its_row(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = await open_store(directory)
    small, large = text_body(12 * KiB, 1), text_body(600 * KiB, 2)
    try:
        source = await commit(store, "small", small)
        added = await make_variants(store, "small", source, "application/json")
        assert set(added) == {"br", "gzip"}
        assert all(ref.path is None and ref.data is not None for ref in added.values())
        assert body_files(directory) == []

        source = await commit(store, "large", large)
        added = await make_variants(store, "large", source, "application/json")
        assert all(ref.size > ROW_BODY_MAX for ref in added.values())
        files = sorted(path.suffix for path in body_files(directory))
        assert files == [".br", ".gzip", ".identity"]
    finally:
        await store.close()

    reopened = await open_store(directory, memory_object_max=0)
    try:
        entry = await reopened.get("small")
        assert entry is not None and set(entry.bodies) == {"identity", "br", "gzip"}
        assert all(ref.path is None for ref in entry.bodies.values())
        assert brotli.decompress(await read_all(entry.bodies["br"])) == small
        assert reopened.size_bytes == sum(ref.size for ref in entry.bodies.values()) + sum(
            ref.size for ref in added.values()
        ) + len(large)
        # deleting it leaves the large object's three files alone
        await reopened.delete("small")
        assert reopened.size_bytes == sum(ref.size for ref in added.values()) + len(large)
        assert len(body_files(directory)) == 3
    finally:
        await reopened.close()


async def test_a_row_with_three_bodies_in_it_stays_in_the_index(
    tmp_path: Path, opened: list[tuple[str, str]]
) -> None:
    # diskcache by default writes a value of 32 KiB or more to a file of its own:
    # a row with three bodies of up to 16 KiB each must not become that file
    directory = tmp_path / "cache"
    store = await open_store(directory)
    bodies = {enc: os.urandom(ROW_BODY_MAX - n) for n, enc in enumerate(("identity", "br", "gzip"))}
    try:
        await commit(store, "k", bodies["identity"])
        for encoding in ("br", "gzip"):
            src = store.tmp_path("." + encoding)
            Path(src).write_bytes(bodies[encoding])
            ref = await store.add_encoding("k", encoding, src)
            assert ref is not None and ref.path is None and ref.data == bodies[encoding]
            assert not os.path.exists(src)
        found = store.index._sql("SELECT filename FROM Cache WHERE key = ?", ("k",)).fetchall()
        assert found == [(None,)]
        store.forget_cached("k")
        opened.clear()
        entry = await store.get("k")
        assert entry is not None
        assert {enc: ref.data for enc, ref in entry.bodies.items()} == bodies
        assert opened == [] and store.inline_loads == 1
        assert body_files(directory) == []
        assert store.size_bytes == sum(map(len, bodies.values()))
    finally:
        await store.close()


def row_bytes(store: DiskStore) -> int:
    """Bytes of the bodies kept in the index rows, each row read."""
    total = 0
    keys = store._disk.keys()
    for key in keys:
        record = store._disk.row(key)
        assert record is not None
        total += sum(len(body[1]) for body in record.bodies if isinstance(body[1], bytes))
    return total


async def test_eviction_and_purge_of_row_bodies_keep_the_byte_bound(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = await open_store(directory, max_bytes=64 * KiB)
    try:
        # 1,000 bodies of 1 KiB into 64 KiB, in waves committed together
        for wave in range(20):
            await asyncio.gather(
                *(commit(store, f"k{wave}-{n}", os.urandom(KiB)) for n in range(50))
            )
            assert store.size_bytes <= store.max_bytes
        keys = await store.keys()
        assert 32 <= len(keys) <= 64 and "k19-49" in keys and "k0-0" not in keys
        assert row_bytes(store) == store.size_bytes == len(keys) * KiB
        assert body_files(directory) == []
        # a purge of every object: nothing to unlink, and the bytes go with the rows
        for key in keys[: len(keys) // 2]:
            await store.delete(key)
        assert row_bytes(store) == store.size_bytes == (len(keys) - len(keys) // 2) * KiB
    finally:
        await store.close()
    reopened = await open_store(directory, max_bytes=64 * KiB)
    try:
        assert reopened.size_bytes == row_bytes(reopened)
    finally:
        await reopened.close()


COMMITTER = textwrap.dedent(
    """
    import asyncio, sys
    from edge.store import DiskStore

    def body(n):
        return bytes([n % 251]) * (1000 + n % 3000)

    async def one(store, n):
        writer = store.begin(f"k{n}")
        await writer.write(body(n))
        await writer.commit(n)

    async def main():
        store = await DiskStore.open(sys.argv[1], max_bytes=1 << 30)
        n = 0
        while True:
            await asyncio.gather(*(one(store, n + i) for i in range(20)))
            n += 20
            print(n, flush=True)

    asyncio.run(main())
    """
)


async def test_a_process_killed_mid_commit_leaves_neither_row_nor_file(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", COMMITTER, str(directory)], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        while int(child.stdout.readline() or b"-1") < 400:
            assert child.poll() is None, "the committing process died"
    finally:
        # killed while it commits: its next batch is somewhere in its transaction
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    store = await open_store(directory)
    try:
        keys = await store.keys()
        assert len(keys) >= 400
        assert body_files(directory) == []
        total = 0
        for key in keys:
            n = int(key[1:])
            entry = await store.get(key)
            assert entry is not None and entry.meta == n
            assert entry.bodies["identity"].data == bytes([n % 251]) * (1000 + n % 3000)
            total += 1000 + n % 3000
        # whatever committed is whole, and the byte total counts exactly that
        assert store.size_bytes == total == row_bytes(store)
        assert store.corrupt_found == 0
    finally:
        await store.close()


async def test_a_body_damaged_in_its_row_is_dropped_never_served(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = await open_store(directory)
    bodies = {"inline-path": os.urandom(2 * KiB), "gateway": os.urandom(3 * KiB)}
    for key, body in bodies.items():
        await commit(store, key, body)
    await commit(store, "sound", b"untouched")
    await store.close()
    for key, body in bodies.items():
        corrupt_row_body(directory, key, body)

    reopened = await open_store(directory)
    dropped: list[str] = []
    reopened.on_corrupt = dropped.append
    try:
        assert await reopened.get("inline-path") is None  # read on the event loop first
        reopened._inline.mode = "off"
        assert await reopened.get("gateway") is None  # the gateway's reader alone
        assert dropped == ["inline-path", "gateway"] and reopened.corrupt_found == 2
        assert await reopened.keys() == ["sound"]  # dropped, not only skipped
        assert reopened.size_bytes == len(b"untouched")
    finally:
        await reopened.close()


@pytest.mark.parametrize("in_memory", [True, False])
async def test_a_store_in_memory_scrubs_on_the_loop(tmp_path: Path, in_memory: bool) -> None:
    """On tmpfs the scrubber reads rows on the event loop, as commits are made: no
    gateway call per object (each handed the GIL back and forth with the loop),
    and a damaged body is still found; on a device it stays on the gateway."""
    directory = tmp_path / "cache"
    store = await DiskStore.open(str(directory), 1 << 30, commit_inline=in_memory)
    body = os.urandom(4 * KiB)
    await commit(store, "k", body)
    for n in range(10):
        await commit(store, f"sound{n}", b"untouched")
    await store.close()
    corrupt_row_body(directory, "k", body)
    reopened = await DiskStore.open(str(directory), 1 << 30, commit_inline=in_memory)
    try:
        calls = io.calls
        assert await scrub_once(reopened, 1 << 30) == len(body) + 10 * len(b"untouched")
        gateway_calls = io.calls - calls
        assert reopened.corrupt_found == 1
        assert "k" not in await reopened.keys()
        if in_memory:
            assert gateway_calls <= 4  # the pages of keys and the drop, not the rows
        else:
            assert gateway_calls >= 11  # a row read each
    finally:
        await reopened.close()


async def test_the_scrubber_finds_a_body_damaged_in_its_row(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = await open_store(directory)
    body = os.urandom(4 * KiB)
    await commit(store, "k", body)
    await commit(store, "sound", b"untouched")
    await store.close()
    corrupt_row_body(directory, "k", body)

    reopened = await open_store(directory)
    try:
        assert await scrub_once(reopened, 1 << 30) == len(body) + len(b"untouched")
        assert reopened.corrupt_found == 1
        assert await reopened.keys() == ["sound"]
        assert reopened.size_bytes == len(b"untouched")
    finally:
        await reopened.close()
