"""A fill's waiters: each waits on a future of its own, and a request that reads a
small fill's body is woken once, when the fill settles, not for the head and again
for the body."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge.fill import WHOLE_AT_COMMIT, Fill, FillFailed, FillHead, HeadKind
from edge.store import BodyRef, body_checksum

BODY = b"a small body"


def small_head() -> FillHead:
    return FillHead(HeadKind.STREAM, length=len(BODY))


async def turns(count: int = 5) -> None:
    """Let the loop run the callbacks that are due (a resolved future wakes its task
    one turn later)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_reader_of_a_small_fill_gets_its_head_at_the_commit(tmp_path: Path) -> None:
    fill = Fill("k", started_at=0.0)
    reader = asyncio.create_task(fill.head(whole=True))
    head_only = asyncio.create_task(fill.head())
    await turns()
    fill.set_head(small_head(), str(tmp_path / "growing"))
    assert fill.whole_at_commit and len(BODY) <= WHOLE_AT_COMMIT
    await turns()
    # a HEAD request answers with the head alone: it has it now
    assert head_only.done() and head_only.result().kind is HeadKind.STREAM
    # the body is not readable before the commit: the reader sleeps on
    assert not reader.done()
    # and one that comes after the head waits as well
    late = asyncio.create_task(fill.head(whole=True))
    await turns()
    assert not late.done()
    fill.finish(BodyRef("identity", len(BODY), BODY, None, body_checksum(BODY)))
    async with asyncio.timeout(10):
        heads = await asyncio.gather(reader, late)
    assert all(head.kind is HeadKind.STREAM for head in heads)
    assert fill.head_time > 0
    # the body is there without another wait
    assert await fill.whole() == BODY
    assert await fill.head(whole=True) is heads[0]


async def test_a_small_fill_that_breaks_off_hands_its_head_then_the_break(
    tmp_path: Path,
) -> None:
    fill = Fill("k", started_at=0.0)
    reader = asyncio.create_task(fill.head(whole=True))
    fill.set_head(small_head(), str(tmp_path / "growing"))
    await turns()
    assert not reader.done()
    fill.fail()
    async with asyncio.timeout(10):
        head = await reader
    assert head.kind is HeadKind.STREAM
    with pytest.raises(FillFailed):
        await fill.whole()


async def test_a_large_fill_hands_its_head_to_readers_at_once(tmp_path: Path) -> None:
    fill = Fill("k", started_at=0.0)
    reader = asyncio.create_task(fill.head(whole=True))
    fill.set_head(FillHead(HeadKind.STREAM, length=WHOLE_AT_COMMIT + 1), str(tmp_path / "g"))
    async with asyncio.timeout(10):
        head = await reader
    assert head.kind is HeadKind.STREAM and not fill.whole_at_commit


@pytest.mark.parametrize("whole", [False, True])
async def test_a_waiter_that_is_cancelled_leaves_the_others_waiting(
    tmp_path: Path, whole: bool
) -> None:
    fill = Fill("k", started_at=0.0)
    gone = asyncio.create_task(fill.head(whole=whole))
    staying = asyncio.create_task(fill.head(whole=whole))
    settling = asyncio.create_task(fill.settled())
    await turns()
    gone.cancel()
    await turns()
    assert gone.cancelled() and not staying.done()
    fill.set_head(small_head(), str(tmp_path / "growing"))
    fill.finish(BodyRef("identity", len(BODY), BODY, None, body_checksum(BODY)))
    async with asyncio.timeout(10):
        assert (await staying).kind is HeadKind.STREAM
        assert await settling is True
