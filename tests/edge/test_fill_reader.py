"""A fill's readers, on real files: what a waiter reads after the others are done.

`Fill` tails the body file its store is writing through one descriptor, which it
closes when the fill is finished and no reader is left. A waiter that starts
reading only after that (it joined the fill, then was slow to read) must get the
committed body, never a read on the closed descriptor (whose number the process
may already have given to another file).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edge.fill import Fill, FillHead, HeadKind
from edge.store import BodyRef, body_checksum, io

KiB = 1024


async def read_fill(fill: Fill, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in fill.read(start, end)])


async def committed_fill(tmp_path: Path, body: bytes) -> tuple[Fill, asyncio.Task[bytes]]:
    """A fill whose body was tailed by one reader while written, then committed
    (renamed into place, as the store does); returns the fill and that reader."""
    growing = tmp_path / "growing"
    await io.run(growing.write_bytes, body)
    fill = Fill("k", started_at=0.0)
    fill.set_head(FillHead(HeadKind.STREAM), str(growing))
    fill.progress(len(body))
    first = asyncio.create_task(read_fill(fill))
    while fill._fd is None and not first.done():  # the reader has the file open
        await asyncio.sleep(0)
    committed = tmp_path / "committed"
    await io.run(os.rename, growing, committed)
    fill.finish(BodyRef("identity", len(body), None, str(committed), body_checksum(body)))
    return fill, first


async def test_a_reader_after_the_last_one_left_gets_the_committed_body(tmp_path: Path) -> None:
    body = os.urandom(300 * KiB)
    fill, first = await committed_fill(tmp_path, body)
    assert await first == body
    # the first reader is gone, so the fill has let go of its descriptor; files the
    # process opens now may be given its number
    others = [await io.run(os.open, os.devnull, os.O_RDONLY) for _ in range(4)]
    try:
        assert await read_fill(fill) == body
        assert await read_fill(fill, 1000, 2000) == body[1000:2000]
    finally:
        for fd in others:
            await io.run(os.close, fd)
