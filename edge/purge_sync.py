"""A node's purge intake: pushes from the purge API, catch-up pulls, and their state.

Every edge and shield runs one `PurgeSync`. The API pushes accepted purges to the
node's admin listener (`POST /admin/purge`); the node applies them to its
`PurgeRules` in sequence order and answers with the highest sequence number it has
applied, which is its acknowledgement. A node that was away pulls what it missed
(`GET /v1/nodes/{node}/purges?since=N` on the API) at start-up, whenever a push
shows a gap, and every `poll_interval` as a safety net.

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
import json
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edge.cache.purge import PurgeRecord, PurgeRules
from edge.statelog import StateLog
from edge.store import io
from fleet.config import Fleet, node_secret
from runtime.auth import bearer_matches

__all__ = ["PurgeStateFile", "PurgeSync", "PurgeSyncError"]

log = logging.getLogger("edgeshield.purge_sync")

PUSH_PATH = "/admin/purge"
PULL_PAGE = 500
_MATCHED_MEMORY = 10_000  # how many recent matched counts a node remembers for acks
#: purges waiting to be counted, at most: a node catching up on thousands of purges
#: counts the latest ones (each count is a scan of the index) and reports no count
#: for the older ones
_COUNT_BACKLOG = 100
#: counts one report to the API carries, at most (the API's MAX_MATCHED)
_REPORT_BATCH = 1000
#: seconds between tries of a report the API did not take
_REPORT_RETRY = 5.0


class PurgeSyncError(Exception):
    """The purge API could not be reached or answered something unusable."""


class PurgeStateFile:
    """The node's purge state on disk: applied rules (JSON lines) and applied_seq.

    `purge-rules.jsonl` gets one line per applied purge, `{"record", "applied_at"}`,
    appended and fsynced before the node acknowledges; `purge-applied.json` holds
    `{"applied_seq": N}` and is replaced atomically after the rules are on disk, so
    a crash between the two leaves rules that are replayed, never a seq without its
    rules. Blocking: the caller runs these methods on the I/O gateway (`edge.store.io`).
    """

    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir)
        self.rules_path = self.dir / "purge-rules.jsonl"
        self.seq_path = self.dir / "purge-applied.json"

    def load(self) -> tuple[int, list[tuple[PurgeRecord, float]]]:
        """(applied_seq, [(record, applied_at), ...]) as saved; (0, []) on a fresh node."""
        applied_seq = 0
        with contextlib.suppress(FileNotFoundError):
            data = json.loads(self.seq_path.read_text(encoding="utf-8"))
            applied_seq = int(data["applied_seq"])
        entries: list[tuple[PurgeRecord, float]] = []
        try:
            raw = self.rules_path.read_bytes()
        except FileNotFoundError:
            raw = b""
        if raw and not raw.endswith(b"\n"):
            # a crash in the middle of an append left a line cut short: cut it off, or
            # the next append would run on from it and that line would be lost too
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(self.rules_path, "r+b") as handle:
                handle.truncate(len(raw))
                handle.flush()
                os.fsync(handle.fileno())
        lines = raw.decode("utf-8", errors="replace").splitlines()
        for line in lines:
            try:
                item = json.loads(line)
                entries.append((PurgeRecord.from_json(item["record"]), float(item["applied_at"])))
            except (ValueError, KeyError, TypeError):
                # a line cut short by a crash: its purge was never acknowledged, and
                # the catch-up pull brings it back
                continue
        return applied_seq, entries

    def append(self, entries: list[tuple[PurgeRecord, float]], applied_seq: int) -> None:
        """Add applied rules, durably, then record the new applied_seq."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if entries:
            text = "".join(
                json.dumps({"record": r.to_json(), "applied_at": at}, separators=(",", ":")) + "\n"
                for r, at in entries
            )
            with open(self.rules_path, "a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        self._replace(self.seq_path, json.dumps({"applied_seq": applied_seq}))

    def rewrite(self, entries: list[tuple[PurgeRecord, float]]) -> None:
        """Replace the rules file with `entries` (after old rules expired)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        text = "".join(
            json.dumps({"record": r.to_json(), "applied_at": at}, separators=(",", ":")) + "\n"
            for r, at in entries
        )
        self._replace(self.rules_path, text)

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


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
        self._api_url = fleet.purge_api.url if fleet.purge_api else None
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
        self._matched: OrderedDict[int, int | None] = OrderedDict()
        self._to_count: deque[PurgeRecord] = deque()
        self._count_wake = asyncio.Event()
        self._unreported: OrderedDict[int, int] = OrderedDict()
        self._counter: asyncio.Task[None] | None = None
        self._stopping = False
        self._report_log = StateLog(log, "purge: reporting matched counts to the API", every=60.0)
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
        self._stopping = True  # the counter ends even if a library swallows its cancel
        self._count_wake.set()
        for task in (self._background, self._counter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._background = self._counter = None
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
        self._count_later([record for record, _ in new])

    # -- counting matches, off the ack path -------------------------------------

    def _count_later(self, records: list[PurgeRecord]) -> None:
        """Queue applied purges for counting; the ack does not wait for it."""
        if self.count_matches is None or not records:
            return
        self._to_count.extend(records)
        while len(self._to_count) > _COUNT_BACKLOG:
            self._to_count.popleft()
        self._count_wake.set()
        if self._counter is None or self._counter.done():
            self._counter = asyncio.get_running_loop().create_task(self._count_forever())

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
                self._remember_matched(record.seq, matched)
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
        """Send counts not reported yet to the API; kept for the next try if it fails."""
        if self._api_url is None or self._session is None:
            return
        url = f"{self._api_url}/v1/nodes/{self.node_name}/matched"
        while self._unreported:
            batch = dict(list(self._unreported.items())[:_REPORT_BATCH])
            try:
                async with self._session.post(
                    url,
                    json={"matched": {str(seq): n for seq, n in batch.items()}},
                    headers={"Authorization": self._auth_header},
                ) as response:
                    if response.status != 200:
                        raise PurgeSyncError(f"answered {response.status}")
            except (TimeoutError, aiohttp.ClientError, PurgeSyncError) as exc:
                self._report_log.failed(f"failed: {exc!r}")
                return
            self._report_log.recovered()
            for seq in batch:
                self._unreported.pop(seq, None)

    def _remember_matched(self, seq: int, matched: int | None) -> None:
        self._matched[seq] = matched
        while len(self._matched) > _MATCHED_MEMORY:
            self._matched.popitem(last=False)

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
        """Pull pages since applied_seq until the API has nothing more."""
        if self._api_url is None:
            return
        if self._session is None:
            raise PurgeSyncError("not started")
        while True:
            since = self.rules.applied_seq
            url = f"{self._api_url}/v1/nodes/{self.node_name}/purges"
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
                raise PurgeSyncError(f"pull from {self._api_url} failed: {exc!r}") from None
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
        matched = {str(r.seq): self._matched.get(r.seq) for r in records}
        return web.json_response(
            {"node": self.node_name, "applied_seq": applied_seq, "matched": matched}
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
