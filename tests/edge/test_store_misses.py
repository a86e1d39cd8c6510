"""The cost of a miss on a real disk store: a small body that arrived whole is
written in place by the commit (no temp file, no rename, no hop of its own), and the
readers of a small fill take the committed copy instead of tailing its file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edge.fill import WHOLE_AT_COMMIT, Fill, FillHead, HeadKind
from edge.store import BodyRef, DiskStore, body_checksum, io, read_body

KiB = 1024


async def read_all(ref: BodyRef) -> bytes:
    return b"".join([chunk async for chunk in read_body(ref)])


async def test_a_small_body_committed_at_once_is_written_in_place(tmp_path: Path) -> None:
    body = os.urandom(KiB)
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=64 * 1024 * KiB, row_body_max=0)
    try:
        writer = store.begin("k")
        await writer.write(body[:300])
        await writer.write(body[300:])
        entry = await writer.commit("meta")
        assert store.commits_in_place == 1
        assert not os.path.exists(writer.path)  # no temp file was ever made
        ref = entry.bodies["identity"]
        assert ref.size == len(body) and ref.checksum == body_checksum(body)
        assert ref.path is not None and Path(ref.path).read_bytes() == body
    finally:
        await store.close()
    # read back from disk by a store that never held it in memory, checksum checked
    reopened = await DiskStore.open(
        str(tmp_path / "cache"), max_bytes=64 * 1024 * KiB, memory_object_max=0
    )
    try:
        again = await reopened.get("k")
        assert again is not None
        ref = again.bodies["identity"]
        assert ref.data is None and ref.checksum == body_checksum(body)
        assert await read_all(ref) == body
    finally:
        await reopened.close()


async def test_a_body_already_in_its_file_is_renamed_in(tmp_path: Path) -> None:
    body = os.urandom(3 * KiB)
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=64 * 1024 * KiB, row_body_max=0)
    try:
        writer = store.begin("k")
        await writer.write(body[:KiB])
        await writer.flush()  # part of it is in the temp file already (a reader may tail it)
        await writer.write(body[KiB:])
        entry = await writer.commit("meta")
        assert store.commits_in_place == 0
        ref = entry.bodies["identity"]
        assert ref.checksum == body_checksum(body)
        assert ref.path is not None and Path(ref.path).read_bytes() == body
    finally:
        await store.close()


async def test_readers_of_a_small_fill_take_the_committed_body(tmp_path: Path) -> None:
    # the growing file holds other bytes than the committed copy: a reader that
    # tailed the file would hand them out
    growing = tmp_path / "growing"
    await io.run(growing.write_bytes, b"WRONG")
    fill = Fill("k", started_at=0.0)
    fill.set_head(FillHead(HeadKind.STREAM, length=5), str(growing))
    assert fill.whole_at_commit and WHOLE_AT_COMMIT >= 5
    fill.progress(5)
    reader = asyncio.create_task(read_fill(fill))
    async with asyncio.timeout(10):
        # until the reader waits for the fill to change: it has done all it does
        # before the commit
        while not fill._settle_waiters:
            await asyncio.sleep(0)
    fill.finish(BodyRef("identity", 5, b"right", None, body_checksum(b"right")))
    assert await reader == b"right"
    assert fill._fd is None  # the growing file was never opened


async def read_fill(fill: Fill) -> bytes:
    return b"".join([chunk async for chunk in fill.read()])
