"""JSON access log lines, formatted off the request path.

The request path only appends a tuple; a background task turns the batch into JSON
lines once in a while, so formatting and writing never delay an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TextIO

from edge.outcome import Outcome

FIELDS = (
    "ts",
    "method",
    "host",
    "target",
    "status",
    "cache",
    "bytes",
    "ms",
    "client",
    "proto",
)


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
        """Queue one request's fields (in FIELDS order); dropped beyond `limit` queued.

        The cache field may be the request's `Outcome` and ms the elapsed seconds: both
        are formatted when the batch is written, off the request path."""
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
                {"node": self.node, **dict(zip(FIELDS, _formatted(fields), strict=False))},
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


_CACHE = FIELDS.index("cache")
_MS = FIELDS.index("ms")


def _formatted(fields: tuple[object, ...]) -> tuple[object, ...]:
    """A queued record as written: an Outcome as its Cache-Status member, seconds as ms."""
    out = list(fields)
    cache = out[_CACHE] if len(out) > _CACHE else None
    if isinstance(cache, Outcome):
        out[_CACHE] = cache.member()
    seconds = out[_MS] if len(out) > _MS else None
    if isinstance(seconds, float):
        out[_MS] = round(seconds * 1000, 3)
    return tuple(out)
