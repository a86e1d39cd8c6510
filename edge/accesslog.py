"""JSON access log lines, formatted off the request path.

The request path only appends a tuple; a background task turns the batch into JSON
lines once in a while, so formatting and writing never delay an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TextIO

FIELDS = ("ts", "method", "host", "target", "status", "cache", "bytes", "ms", "client")


class AccessLog:
    """A batched JSON-lines access log for one node."""

    def __init__(
        self, stream: TextIO, node: str, interval: float = 0.5, limit: int = 100_000
    ) -> None:
        self.stream = stream
        self.node = node
        self.interval = interval
        self.limit = limit
        self._pending: list[tuple[object, ...]] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, fields: tuple[object, ...]) -> None:
        """Queue one request's fields (in FIELDS order); dropped beyond `limit` queued."""
        if len(self._pending) < self.limit:
            self._pending.append(fields)
        else:
            self.dropped += 1

    def flush(self) -> None:
        """Write what is queued."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        lines = [
            json.dumps(
                {"node": self.node, **dict(zip(FIELDS, fields, strict=False))},
                separators=(",", ":"),
            )
            for fields in pending
        ]
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    def start(self) -> None:
        """Start the periodic flush."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Flush and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
