"""Stopping a background task: cancel it and wait until it has ended.

Every long-running loop of a node or service (health probes, flushes, sweeps, pulls)
is stopped the same way at shutdown; waiting for it to end means nothing it owns is
used after its owner closed it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait for it to end; its cancellation is not an error."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
