"""Waiting for an event in a test: poll a check until it holds, with a deadline.

Tests wait for what they depend on (a counter, a log line, a count at the origin),
never for a fixed time; this is the one poll loop they share.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    what: str = "the condition",
    timeout: float = 15.0,
    interval: float = 0.05,
) -> None:
    """Poll `check` (plain or async) until it holds; fail naming `what` after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(interval)
