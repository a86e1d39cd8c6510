"""`cancel_and_wait`: a background loop stopped at shutdown has ended when it returns."""

from __future__ import annotations

import asyncio

from runtime.tasks import cancel_and_wait


async def test_a_running_loop_has_ended_when_it_returns() -> None:
    ended = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    task = asyncio.get_running_loop().create_task(forever())
    await asyncio.sleep(0)  # let it start
    await cancel_and_wait(task)
    assert task.cancelled() and ended.is_set()


async def test_no_task_and_a_finished_task_are_fine() -> None:
    await cancel_and_wait(None)
    task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    await task
    await cancel_and_wait(task)
    assert task.done() and not task.cancelled()
