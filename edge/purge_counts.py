"""How many stored objects each purge covered on a node: counted off the ack path.

Counting scans the store's index, and an acknowledgement must not wait for it. A
node's `PurgeSync` hands every applied purge to its `MatchCounter`, which counts
them in the background one at a time and reports the counts to the API
(`POST /v1/nodes/{node}/matched`) through the send function it was given; an ack
carries the counts that are ready (a purge pushed again, mostly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from edge.cache.purge import PurgeRecord
from edge.statelog import StateLog
from runtime.tasks import cancel_and_wait

__all__ = ["MatchCounter"]

log = logging.getLogger("edgeshield.purge_sync")

_MATCHED_MEMORY = 10_000  # how many recent matched counts a node remembers for acks
#: purges waiting to be counted, at most: a node catching up on thousands of purges
#: counts the latest ones (each count is a scan of the index) and reports no count
#: for the older ones
_COUNT_BACKLOG = 100
#: counts one report to the API carries, at most (the API's MAX_MATCHED)
_REPORT_BATCH = 1000
#: seconds between tries of a report the API did not take
_REPORT_RETRY = 5.0


class MatchCounter:
    """Counts applied purges' matches in the background and reports them.

    `send` delivers one batch of {seq: count} to the API and raises on failure (the
    batch is kept and tried again after a while).
    """

    def __init__(
        self,
        count_matches: Callable[[PurgeRecord], Awaitable[int]] | None,
        count_timeout: float,
        send: Callable[[dict[int, int]], Awaitable[None]],
    ) -> None:
        self.count_matches = count_matches
        self.count_timeout = count_timeout
        self._send = send
        self.matched: OrderedDict[int, int | None] = OrderedDict()
        """Recent counts by seq (None: counting failed), for acks of purges sent again."""
        self._to_count: deque[PurgeRecord] = deque()
        self._count_wake = asyncio.Event()
        self._unreported: OrderedDict[int, int] = OrderedDict()
        self._counter: asyncio.Task[None] | None = None
        self._stopping = False
        self._report_log = StateLog(log, "purge: reporting matched counts to the API", every=60.0)

    def count_later(self, records: list[PurgeRecord]) -> None:
        """Queue applied purges for counting; the ack does not wait for it."""
        if self.count_matches is None or not records:
            return
        self._to_count.extend(records)
        while len(self._to_count) > _COUNT_BACKLOG:
            self._to_count.popleft()
        self._count_wake.set()
        if self._counter is None or self._counter.done():
            self._counter = asyncio.get_running_loop().create_task(self._count_forever())

    async def stop(self) -> None:
        """Stop counting (what is queued is dropped: counts are reports)."""
        self._stopping = True  # the counter ends even if a library swallows its cancel
        self._count_wake.set()
        if self._counter is not None:
            await cancel_and_wait(self._counter)
        self._counter = None

    async def _count_forever(self) -> None:
        """Background: count queued purges one at a time, then report the counts."""
        while not self._stopping:
            if self._unreported:  # a report failed: try again after a while
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_REPORT_RETRY):
                        await self._count_wake.wait()
            else:
                await self._count_wake.wait()
            self._count_wake.clear()
            while self._to_count:
                record = self._to_count.popleft()
                matched = await self._count(record)
                self._remember(record.seq, matched)
                if matched is not None:
                    self._unreported[record.seq] = matched
                    while len(self._unreported) > _MATCHED_MEMORY:
                        self._unreported.popitem(last=False)
            await self._report()

    async def _count(self, record: PurgeRecord) -> int | None:
        assert self.count_matches is not None
        try:
            async with asyncio.timeout(self.count_timeout):
                return await self.count_matches(record)
        except Exception:  # a count is a report: log it and go on
            log.exception("purge: counting matches of seq %d failed", record.seq)
            return None

    async def _report(self) -> None:
        """Send counts not reported yet; kept for the next try if it fails."""
        while self._unreported:
            batch = dict(list(self._unreported.items())[:_REPORT_BATCH])
            try:
                await self._send(batch)
            except Exception as exc:  # PurgeSyncError and its kin: a report, tried again
                self._report_log.failed(f"failed: {exc!r}")
                return
            self._report_log.recovered()
            for seq in batch:
                self._unreported.pop(seq, None)

    def _remember(self, seq: int, matched: int | None) -> None:
        self.matched[seq] = matched
        while len(self.matched) > _MATCHED_MEMORY:
            self.matched.popitem(last=False)
