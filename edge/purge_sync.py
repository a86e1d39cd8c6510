"""A node's purge intake: pushes from the purge API, catch-up pulls, and their state.

Every edge and shield runs one `PurgeSync`. The API pushes accepted purges to the
node's admin listener (`POST /admin/purge`); the node applies them to its
`PurgeRules` in sequence order and answers with the highest sequence number it has
applied, which is its acknowledgement. A node that was away pulls what it missed
(`GET /v1/nodes/{node}/purges?since=N` on the API) at start-up, whenever a push
shows a gap, and every `poll_interval` as a safety net; with API replicas
(`[purge_api] listen` a list, a JetStream log) it pulls from each in turn until one
answers. Every replica pushes, so a node hears of a purge while any replica lives.

How many stored objects a purge covers (`matched`, a report for the purge's status)
is counted off the acknowledgement path: counting scans the store's index, and an
ack must not wait for it. An ack carries the counts that are ready; the rest are
counted in the background, one purge at a time, and sent to the API when done
(`POST /v1/nodes/{node}/matched`).

Applied rules and the applied sequence number are kept in `state_dir`, each rule
with the node-local time it was first applied, so a restarted node keeps its rules
exactly as they were and pulls only what it missed. When the API cannot be reached
at start-up, the node marks everything it holds stale as of that moment (a local
soft purge of every service), becomes ready, and keeps trying in the background:
nothing stored before it went away is served without revalidation.

The node protocol is described in docs/purge-api.md ("Node protocol").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from edge.cache.purge import PurgeRecord, PurgeRules
from edge.purge_counts import MatchCounter
from edge.purge_state import PurgeStateFile
from edge.statelog import StateLog
from edge.store import io
from fleet.config import Fleet, node_secret
from runtime.auth import bearer_matches
from runtime.tasks import cancel_and_wait

__all__ = ["PurgeStateFile", "PurgeSync", "PurgeSyncError"]

log = logging.getLogger("edgeshield.purge_sync")

PUSH_PATH = "/admin/purge"
PULL_PAGE = 500


class PurgeSyncError(Exception):
    """The purge API could not be reached or answered something unusable."""


class PurgeSync:
    """Keeps a node's `PurgeRules` in step with the purge API's log.

    Mount `routes()` on the node's admin app, `await start()` before serving (it
    catches up first), and report `ready` in the node's health check.
    """

    def __init__(
        self,
        fleet: Fleet,
        node_name: str,
        rules: PurgeRules,
        state_dir: str,
        count_matches: Callable[[PurgeRecord], Awaitable[int]] | None = None,
        clock: Callable[[], float] = time.time,
        *,
        startup_retry: float = 3.0,
        poll_interval: float = 30.0,
        max_rule_age: float | None = None,
        count_timeout: float = 30.0,
    ) -> None:
        self.fleet = fleet
        self.node_name = node_name
        self.rules = rules
        self.count_matches = count_matches
        self.clock = clock
        self.startup_retry = startup_retry
        self.poll_interval = poll_interval
        self.max_rule_age = max_rule_age
        self.count_timeout = count_timeout
        self._state = PurgeStateFile(state_dir)
        # every replica of the API, used in turn: the one that answered last first
        self._api_urls = fleet.purge_api.urls if fleet.purge_api else ()
        self._api_url = self._api_urls[0] if self._api_urls else None
        secret = node_secret(fleet)
        if self._api_url and not secret:
            raise PurgeSyncError(
                f"the node secret is not set: export {fleet.security.node_secret_env}"
            )
        self._secret = secret
        self._auth_header = f"Bearer {secret}"
        self._lock = asyncio.Lock()
        self._pull_log = StateLog(log, "purge: catch-up from the API", every=60.0)
        self._applied: list[tuple[PurgeRecord, float]] = []
        self._counts = MatchCounter(count_matches, count_timeout, self._send_matched)
        self._session: aiohttp.ClientSession | None = None
        self._background: asyncio.Task[None] | None = None
        self._ready = self._api_url is None
        # pushes wait until the saved rules are restored: before that, applied_seq
        # reads 0 and a push from seq 1 would apply old purges again as new
        self._restored = self._api_url is None
        self.caught_up = self._api_url is None
        """True once a pull from the API has succeeded since start-up."""

    # -- what the node sees ---------------------------------------------------

    @property
    def ready(self) -> bool:
        """False while the node is catching up at start-up (it must not serve yet)."""
        return self._ready

    def routes(self) -> list[web.RouteDef]:
        """The admin routes: the push intake, POST /admin/purge (node secret required)."""
        return [web.post(PUSH_PATH, self._handle_push)]

    async def start(self) -> None:
        """Restore saved rules, then catch up from the API before returning.

        If the API cannot be reached for `startup_retry` seconds, mark everything
        stale as of now (a local soft purge of every service), become ready and keep
        trying in the background.
        """
        if self._api_url is None:
            self._ready = True
            return
        loop = asyncio.get_running_loop()
        applied_seq, entries = await io.run(self._state.load)
        self._restore(applied_seq, entries)
        self._restored = True
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5.0, sock_connect=2.0)
        )
        deadline = loop.time() + self.startup_retry
        delay = 0.1
        while True:
            try:
                await self.catch_up()
                break
            except PurgeSyncError as exc:
                if loop.time() + delay > deadline:
                    self._mark_everything_stale(str(exc))
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._ready = True
        self._background = asyncio.create_task(self._keep_in_step())

    async def stop(self) -> None:
        """Stop the background pulls and counts, and close the HTTP session."""
        await self._counts.stop()
        if self._background is not None:
            await cancel_and_wait(self._background)
        self._background = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def catch_up(self) -> int:
        """Pull and apply everything after applied_seq; the new applied_seq.

        Raises PurgeSyncError when the API cannot be reached.
        """
        async with self._lock:
            await self._pull_locked()
            self.caught_up = True
            return self.rules.applied_seq

    # -- restoring and applying -----------------------------------------------

    def _restore(self, applied_seq: int, entries: list[tuple[PurgeRecord, float]]) -> None:
        """Rules as they were before a restart, each with its original applied_at."""
        self.rules.applied_seq = max(self.rules.applied_seq, applied_seq)
        later = []
        for record, applied_at in entries:
            if record.seq <= applied_seq:
                self.rules.apply_local(record, applied_at)
                self._applied.append((record, applied_at))
            else:
                later.append((record, applied_at))
        # on disk but not counted in applied_seq (a crash between the two writes)
        for record, applied_at in sorted(later, key=lambda e: e[0].seq):
            if record.seq == self.rules.applied_seq + 1:
                self.rules.apply(record, applied_at)
                self._applied.append((record, applied_at))
        if applied_seq or entries:
            log.info(
                "purge: restored %d rules, applied_seq %d",
                len(self._applied),
                self.rules.applied_seq,
            )

    def _mark_everything_stale(self, reason: str) -> None:
        now = self.clock()
        for service in self.fleet.services:
            record = PurgeRecord(
                0, "local-start", service.name, all=True, soft=True, accepted_at=now
            )
            self.rules.apply_local(record, now)
        log.warning(
            "purge: API unreachable at start-up (%s); everything stored before now is "
            "stale until revalidated; still trying in the background",
            reason,
        )

    async def _apply_locked(self, records: list[PurgeRecord]) -> None:
        """Persist the records that continue applied_seq, then apply them, in order; count.

        On disk first: if saving fails, nothing is applied and applied_seq stays where
        it was, so the push is answered with an error and its retry saves it again
        (never an acknowledgement for a rule that is not on disk). A rule on disk but
        not applied (a crash in between) is restored at start-up.
        """
        new: list[tuple[PurgeRecord, float]] = []
        seq = self.rules.applied_seq
        for record in sorted(records, key=lambda r: r.seq):
            if record.seq != seq + 1:
                continue  # seen already, or beyond a gap the caller could not fill
            new.append((record, self.clock()))
            seq = record.seq
        if not new:
            return
        try:
            await io.run(self._state.append, new, seq)
        except OSError as exc:
            raise PurgeSyncError(f"saving purge rules failed: {exc}") from None
        for record, applied_at in new:
            self.rules.apply(record, applied_at)
        self._applied.extend(new)
        # every process of the node has them before the caller acknowledges
        await self.rules.settled()
        self._counts.count_later([record for record, _ in new])

    async def _send_matched(self, counts: dict[int, int]) -> None:
        """Send matched counts to the API (the replica that answered last)."""
        if self._api_url is None:
            return  # no API to tell
        if self._session is None:
            raise PurgeSyncError("not started")
        url = f"{self._api_url}/v1/nodes/{self.node_name}/matched"
        try:
            async with self._session.post(
                url,
                json={"matched": {str(seq): n for seq, n in counts.items()}},
                headers={"Authorization": self._auth_header},
            ) as response:
                if response.status != 200:
                    raise PurgeSyncError(f"answered {response.status}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PurgeSyncError(repr(exc)) from None

    async def expire_rules(self) -> int:
        """Drop rules older than `max_rule_age` here and on disk; how many went."""
        if self.max_rule_age is None:
            return 0
        async with self._lock:
            now = self.clock()
            dropped = self.rules.expire(now, self.max_rule_age)
            await self.rules.settled()
            cutoff = now - self.max_rule_age
            kept = [(r, at) for r, at in self._applied if at >= cutoff]
            if len(kept) != len(self._applied):
                self._applied = kept
                await io.run(self._state.rewrite, kept)
            return dropped

    # -- talking to the API ---------------------------------------------------

    async def _pull_locked(self) -> None:
        """Pull pages since applied_seq until the API has nothing more, from any replica.

        A replica that fails is left for the next one (`[purge_api] listen` lists them);
        the error is raised only when none answered.
        """
        if self._api_url is None:
            return
        if self._session is None:
            raise PurgeSyncError("not started")
        first = self._api_urls.index(self._api_url)
        failures = []
        for turn in range(len(self._api_urls)):
            url = self._api_urls[(first + turn) % len(self._api_urls)]
            try:
                await self._pull_from(url)
            except PurgeSyncError as exc:
                failures.append(str(exc))
                continue
            self._api_url = url
            return
        raise PurgeSyncError("; ".join(failures))

    async def _pull_from(self, api_url: str) -> None:
        assert self._session is not None
        while True:
            since = self.rules.applied_seq
            url = f"{api_url}/v1/nodes/{self.node_name}/purges"
            params = {"since": str(since), "limit": str(PULL_PAGE)}
            try:
                async with self._session.get(
                    url, params=params, headers={"Authorization": self._auth_header}
                ) as response:
                    if response.status != 200:
                        text = await response.text()
                        raise PurgeSyncError(f"pull answered {response.status}: {text[:200]}")
                    body = await response.json()
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                raise PurgeSyncError(f"pull from {api_url} failed: {exc!r}") from None
            try:
                records = [PurgeRecord.from_json(item) for item in body["records"]]
                more = bool(body.get("more", False))
            except (ValueError, KeyError, TypeError) as exc:
                raise PurgeSyncError(f"pull answer unusable: {exc}") from None
            await self._apply_locked(records)
            if not records or not more or self.rules.applied_seq == since:
                return

    async def _keep_in_step(self) -> None:
        """Background: retry until caught up, then pull every poll_interval, and expire."""
        delay = self.poll_interval if self.caught_up else 0.5
        last_expiry = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self.catch_up()
                self._pull_log.recovered()
                delay = self.poll_interval
            except PurgeSyncError as exc:
                self._pull_log.failed(f"failed: {exc}")
                delay = min(max(delay * 2, 0.5), 5.0) if not self.caught_up else 5.0
            now = time.monotonic()
            if self.max_rule_age is not None and now - last_expiry > 3600:
                last_expiry = now
                await self.expire_rules()

    # -- the push intake ------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return bearer_matches(request.headers.get("Authorization"), self._secret)

    async def _handle_push(self, request: web.Request) -> web.Response:
        """POST /admin/purge {"records": [...]} -> {"node", "applied_seq", "matched"}.

        `matched` has a count for each record whose count is ready (a record sent
        again, mostly) and null for the others; those follow to the API when counted.
        """
        if not self._authorized(request):
            return _error(401, "missing or wrong node secret")
        try:
            body: Any = await request.json()
            records = [PurgeRecord.from_json(item) for item in body["records"]]
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"bad push body: {exc}")
        if not self._restored:
            return _error(503, "starting: saved purge rules not restored yet")
        async with self._lock:
            pending = [r for r in records if r.seq > self.rules.applied_seq]
            if pending and min(r.seq for r in pending) > self.rules.applied_seq + 1:
                # a gap: pull the missing range first, so purges apply in order
                with contextlib.suppress(PurgeSyncError):
                    await self._pull_locked()
            try:
                await self._apply_locked(records)
            except PurgeSyncError as exc:
                # nothing was applied: the API retries, and only an ack counts
                log.error("purge: %s", exc)
                return _error(503, "could not save the purge rules")
            applied_seq = self.rules.applied_seq
        if records and applied_seq < max(r.seq for r in records):
            return web.json_response(
                {
                    "error": f"missing purges after seq {applied_seq}; send them first",
                    "node": self.node_name,
                    "applied_seq": applied_seq,
                },
                status=409,
            )
        matched = {str(r.seq): self._counts.matched.get(r.seq) for r in records}
        return web.json_response(
            {"node": self.node_name, "applied_seq": applied_seq, "matched": matched}
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
