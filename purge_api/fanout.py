"""Fan-out: push every purge to every node, shields first, and collect acknowledgements.

One sender task per node keeps that node in step with the log. A shield's sender
pushes everything up to the log's head. An edge's sender pushes only up to the
*released* sequence: the highest one every live shield has acknowledged, so no edge
hears of a purge (and refills from a shield) before the shields have applied it. A
shield that cannot be reached is not live and does not hold the edges back; it pulls
what it missed when it returns, before it serves.

A push that fails is retried with exponential backoff and jitter. A node that is
down is caught up by its own pull at start-up; the pull also wakes its sender.
A purge is complete when every node of the fleet has acknowledged it; nodes apply
in order, so that is when every node's acknowledged sequence has reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from fleet.config import Fleet, NodeConfig, ShieldConfig
from purge_api.logs import LogUnavailable, PurgeLogStore

__all__ = ["FanOut", "NodeLink"]

log = logging.getLogger("edgeshield.purge_api.fanout")

PUSH_BATCH = 200
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 5.0


class NodeLink:
    """What the API knows of one node: its acknowledged sequence and whether it answers."""

    def __init__(self, node: NodeConfig, acked_seq: int) -> None:
        self.name = node.name
        self.push_url = node.admin_url + "/admin/purge"
        self.is_shield = isinstance(node, ShieldConfig)
        self.acked_seq = acked_seq
        #: the highest seq whose acks of this node are in the log (what status shows)
        self.recorded_seq = acked_seq
        self.failures = 0
        self.last_error = ""
        self.wake = asyncio.Event()  # something to send may have appeared
        self.retry_now = asyncio.Event()  # the node showed it is up: end the backoff

    @property
    def is_live(self) -> bool:
        """False after a push failed, until one succeeds again."""
        return self.failures == 0


class FanOut:
    """The sender tasks of every node, and the wait for a purge to be complete."""

    def __init__(
        self,
        fleet: Fleet,
        purge_log: PurgeLogStore,
        secret: str,
        clock: Callable[[], float] = time.time,
        push_timeout: float = 2.0,
    ) -> None:
        self.fleet = fleet
        self.log = purge_log
        self.clock = clock
        self.push_timeout = push_timeout
        self._headers = {"Authorization": f"Bearer {secret}"}
        self.head = 0
        self.links: dict[str, NodeLink] = {}
        self._changed = asyncio.Condition()
        self._notifying: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the log, read where every node was, and start one sender per node."""
        await self.log.open(self)
        self.head = await self.log.head()
        seqs = await self.log.node_seqs()
        for node in self.fleet.nodes:
            self.links[node.name] = NodeLink(node, min(seqs.get(node.name, 0), self.head))
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.push_timeout),
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=4),
        )
        self._tasks = [
            asyncio.create_task(self._send(link), name=f"purge-push-{link.name}")
            for link in self.links.values()
        ]

    async def stop(self) -> None:
        """Stop the senders and close connections."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- what the API asks ----------------------------------------------------

    def appended(self, seq: int) -> None:
        """A purge was logged: wake the shields (or the edges, if no shield is live)."""
        self.head = max(self.head, seq)
        self._wake_all()

    def released(self) -> int:
        """The highest sequence edges may be told: every live shield has acknowledged it."""
        live = [link.acked_seq for link in self.links.values() if link.is_shield and link.is_live]
        return min([self.head, *live])

    def limit_for(self, node: str) -> int:
        """The highest sequence `node` may receive now (pushed or pulled)."""
        link = self.links.get(node)
        if link is None or link.is_shield:
            return self.head
        return self.released()

    def is_complete(self, seq: int) -> bool:
        """Whether every node of the fleet has acknowledged purge `seq`, as the log records."""
        return all(link.recorded_seq >= seq for link in self.links.values())

    async def wait_complete(self, seq: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds for purge `seq` to be complete; whether it is."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.is_complete(seq)), timeout
                )
            return self.is_complete(seq)

    def node_acked(self, node: str, acked_seq: int) -> None:
        """Another replica recorded `node`'s acks (a shared log): take its progress."""
        link = self.links.get(node)
        if link is None:
            return
        link.recorded_seq = max(link.recorded_seq, acked_seq)
        if acked_seq > link.acked_seq:
            link.acked_seq = acked_seq
            if link.is_shield:
                self._wake_all()
        task = asyncio.get_running_loop().create_task(self._notify())
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def node_pulled(self, node: str) -> None:
        """A node pulled from the log: it is up, so retry its pushes now."""
        link = self.links.get(node)
        if link is not None:
            link.retry_now.set()
            link.wake.set()

    # -- the senders ----------------------------------------------------------

    def _wake_all(self) -> None:
        for link in self.links.values():
            link.wake.set()

    async def _send(self, link: NodeLink) -> None:
        while True:
            link.wake.clear()
            target = self.limit_for(link.name)
            if link.acked_seq >= target:
                await link.wake.wait()
                continue
            try:
                purges = await self.log.since(link.acked_seq, PUSH_BATCH, target)
            except LogUnavailable as exc:
                await self._failed(link, f"reading the log failed: {exc}")
                continue
            if not purges:
                # the node's acked_seq is ahead of anything to send (should not happen)
                await link.wake.wait()
                continue
            try:
                status, body = await self._push(link, [p.to_wire() for p in purges])
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                await self._failed(link, f"push failed: {exc!r}")
                continue
            applied = body.get("applied_seq") if isinstance(body, dict) else None
            if status in (200, 409) and isinstance(applied, int):
                await self._acknowledged(link, applied, body.get("matched"))
                if status == 409:
                    # the node has a gap it could not fill: resend from where it is
                    link.acked_seq = min(link.acked_seq, applied)
                continue
            await self._failed(link, f"push answered {status}: {str(body)[:200]}")

    async def _push(self, link: NodeLink, records: list[dict[str, object]]) -> tuple[int, Any]:
        assert self._session is not None
        async with self._session.post(
            link.push_url, json={"records": records}, headers=self._headers
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = {"error": (await response.text())[:200]}
            return response.status, body

    async def _acknowledged(self, link: NodeLink, applied_seq: int, matched: object) -> None:
        """Record acks for every purge up to the node's applied sequence."""
        now = self.clock()
        counts = matched if isinstance(matched, dict) else {}
        start = link.acked_seq
        acks = []
        for seq in range(start + 1, applied_seq + 1):
            count = counts.get(str(seq))
            acks.append((seq, now, count if isinstance(count, int) else None))
        was_live = link.is_live
        link.acked_seq = applied_seq
        link.failures = 0
        link.last_error = ""
        if link.is_shield or not was_live:
            # edges are released as soon as the shield has applied, before the log
            # has recorded it (a replica lost in between pushes again, acked again)
            self._wake_all()
        try:
            await self.log.record_acks(link.name, applied_seq, acks)
        except LogUnavailable as exc:
            # the node has them applied; its next push or pull acknowledges again
            log.warning("purge: recording acks of %s failed: %s", link.name, exc)
        else:
            link.recorded_seq = max(link.recorded_seq, applied_seq)
        async with self._changed:
            self._changed.notify_all()

    async def _failed(self, link: NodeLink, error: str) -> None:
        """Back off before the next push; a failed shield no longer holds edges back."""
        link.failures += 1
        if error != link.last_error:
            log.warning("purge: node %s: %s", link.name, error)
        link.last_error = error
        if link.is_shield and link.failures == 1:
            self._wake_all()  # released() moved past this shield
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (link.failures - 1))
        delay *= random.uniform(0.5, 1.0)
        link.retry_now.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.retry_now.wait(), delay)
