"""Purge rules and metrics relayed between a node's worker processes.

Worker 0's rules are the pure `PurgeRules`; a `WorkerRelay` beside them (their
observer) writes every change to the live workers over asyncio streams on
socketpairs, one JSON line each, and never blocks the event loop. Before the node
acknowledges a purge to the API, the purge sync waits (`settled`) until every live
worker has acknowledged it: when the API hears of an ack, every live process of the
node has applied the purge. A worker that cannot take a rule (its socket is broken,
or it does not answer in time) is no longer live: it is killed and replaced, and
its replacement starts from every rule applied so far. A worker opens its traffic
listener only after it has all of them ("ready"), so no worker serves an object a
purge covers.

The other way, a worker's `RelayFollower` sends the worker's own invalidations
(after a successful unsafe request, RFC 9111 4.4) up to worker 0, which applies them
and relays them to every other worker; the request is answered only once they all
have it. Those are the node's own rules: not saved, and not reported to the API.

Worker 0 also asks every worker for its metric values when `/metrics` is scraped
(`collect_metrics`): the request path of every process only adds to plain numbers,
and the sum over the processes is made at scrape time, so a scrape sees every
request any worker answered before it.

The lines: worker → 0 `h` (hello, once), `k` (one per line taken), and
`{"op": "invalidate", "id", "service", "host", "target", "at"}` and
`{"op": "metrics", "id", "values"}` (the answer to a "metrics" line); 0 → worker
`{"op": "batch" | "ready" | "apply" | "local" | "invalidate" | "expire" |
"invalidated" | "metrics", ...}`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from edge.cache.purge import PurgeRecord, PurgeRules

__all__ = ["HELLO", "RELAY_TIMEOUT", "RelayFollower", "WorkerRelay"]

log = logging.getLogger("edgeshield.workers")

#: How long worker 0 waits for a worker to acknowledge a relayed rule.
RELAY_TIMEOUT = 5.0
#: How long worker 0 waits for a worker's metric values before leaving them out.
METRICS_TIMEOUT = 2.0
#: The first line a worker sends on its relay stream.
HELLO = b"h\n"
_ACK = b"k\n"


class _Peer:
    """Worker 0's end of one worker's relay stream: lines out, one "k" back per line."""

    def __init__(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.number = number
        self.reader = reader
        self.writer = writer
        # one future per line sent and not yet acknowledged, oldest first
        self._pending: deque[asyncio.Future[bool]] = deque()
        self.task: asyncio.Task[None] | None = None

    def send(self, messages: Sequence[dict[str, Any]]) -> None:
        """Queue lines to the worker; never blocks (the stream buffers them)."""
        if self.writer.is_closing():
            return
        loop = asyncio.get_running_loop()
        self.writer.write(b"".join(_line(m) for m in messages))
        self._pending.extend(loop.create_future() for _ in messages)

    def acknowledged(self) -> None:
        """The worker took the oldest line not acknowledged yet."""
        if self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(True)

    async def caught_up(self, timeout: float) -> bool:
        """Whether the worker takes every line sent so far within `timeout`."""
        if self.writer.is_closing():
            return False
        if not self._pending:
            return True
        try:
            return await asyncio.wait_for(asyncio.shield(self._pending[-1]), timeout)
        except TimeoutError:
            return False

    def close(self) -> None:
        """The worker is gone: nothing sent to it will be acknowledged."""
        self.writer.close()
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(False)


class WorkerRelay:
    """Worker 0's observer of the node's `PurgeRules`: every change goes to every worker.

    The rules stay the pure `PurgeRules`; this object sits beside them (it sets itself
    as their `observer`) and writes each change as a JSON line to every live worker's
    asyncio stream, never blocking the event loop. `settled()` waits until every live
    worker has acknowledged every line so far: the purge sync awaits it before it
    acknowledges a purge, so an acknowledged purge is applied in every live process. A
    worker that does not acknowledge within `RELAY_TIMEOUT` (its socket is broken, or
    it is stopped or wedged) is dropped and reported to `on_lost(number)`, which kills
    it; its replacement starts from `history`, every purge applied so far.

    Workers send their own invalidations (RFC 9111 4.4, after an unsafe request) up
    the same stream; worker 0 applies each one to its rules, which relays it to every
    other worker, and answers the sender once all of them have it. Invalidations are
    not kept in `history` (a worker that joins later has no fill from before them, and
    the invalidated objects were deleted from the shared store).
    """

    def __init__(self, rules: PurgeRules, on_lost: Callable[[int], None] | None = None) -> None:
        self.rules = rules
        rules.observer = self
        self._peers: dict[int, _Peer] = {}
        self._history: list[dict[str, Any]] = []
        self._on_lost = on_lost
        self._origin: int | None = None  # the worker whose invalidation is being applied
        self._tasks: set[asyncio.Task[None]] = set()
        self._metric_ids = itertools.count(1)
        self._metrics: dict[int, asyncio.Future[dict[str, Any]]] = {}

    @property
    def live_peers(self) -> list[int]:
        """The workers (by number) that take every rule."""
        return sorted(self._peers)

    # -- the rules' observer ---------------------------------------------------

    def applied(self, record: PurgeRecord, applied_at: float, *, local: bool) -> None:
        """Relay an applied purge, and keep it for workers that join later."""
        message = {
            "op": "local" if local else "apply",
            "record": record.to_json(),
            "at": applied_at,
        }
        self._history.append(message)
        self._send_all(message)

    def invalidated(self, service: str, host: str, target: str, applied_at: float) -> None:
        """Relay an invalidation to every worker but the one it came from."""
        message = {"op": "invalidate", "service": service, "host": host, "target": target}
        self._send_all(message | {"at": applied_at}, skip=self._origin)

    def expired(self, now: float, max_lifetime: float) -> None:
        """Relay an expiry, and stop giving the expired rules to workers that join."""
        cutoff = now - max_lifetime
        self._history = [m for m in self._history if _applied_at(m) >= cutoff]
        self._send_all({"op": "expire", "now": now, "max": max_lifetime})

    async def settled(self) -> None:
        """Wait until every live worker has taken every change; drop those that do not."""
        peers = list(self._peers.values())
        results = await asyncio.gather(*(peer.caught_up(RELAY_TIMEOUT) for peer in peers))
        for peer, ok in zip(peers, results, strict=True):
            if not ok and self._peers.get(peer.number) is peer:
                log.warning("worker %d did not take a purge rule; replacing it", peer.number)
                self._lose(peer.number)

    async def collect_metrics(self, timeout: float = METRICS_TIMEOUT) -> list[dict[str, Any]]:
        """Every live worker's metric values (a `NodeMetrics.snapshot()` each); a
        worker that does not answer within `timeout` is left out (and logged)."""
        loop = asyncio.get_running_loop()
        asked: dict[int, asyncio.Future[dict[str, Any]]] = {}
        for peer in self._peers.values():
            ask = next(self._metric_ids)
            asked[ask] = self._metrics[ask] = loop.create_future()
            peer.send([{"op": "metrics", "id": ask}])
        if not asked:
            return []
        await asyncio.wait(asked.values(), timeout=timeout)
        values = []
        for ask, future in asked.items():
            self._metrics.pop(ask, None)
            if future.done():
                values.append(future.result())
            else:
                future.cancel()
                log.warning("a worker did not send its metrics within %.1fs", timeout)
        return values

    # -- workers joining and leaving ---------------------------------------------

    async def join(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Give a (re)started worker every rule so far, then let it serve; from now on
        it takes every change. False (and the worker is dropped) if it failed."""
        peer = _Peer(number, reader, writer)
        self._peers[number] = peer
        peer.task = asyncio.get_running_loop().create_task(self._read(peer))
        peer.send([{"op": "batch", "messages": list(self._history)}, {"op": "ready"}])
        if await peer.caught_up(RELAY_TIMEOUT) and self._peers.get(number) is peer:
            return True
        self.drop(number)
        return False

    def drop(self, number: int) -> None:
        """Forget a worker that exited or failed (its stream is closed)."""
        peer = self._peers.pop(number, None)
        if peer is not None:
            peer.close()
            if peer.task is not None and peer.task is not asyncio.current_task():
                peer.task.cancel()

    async def close(self) -> None:
        """Drop every worker and wait for the relay's own tasks."""
        for number in list(self._peers):
            self.drop(number)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _lose(self, number: int) -> None:
        self.drop(number)
        if self._on_lost is not None:
            self._on_lost(number)

    def _send_all(self, message: dict[str, Any], skip: int | None = None) -> None:
        for number, peer in self._peers.items():
            if number != skip:
                peer.send([message])

    async def _read(self, peer: _Peer) -> None:
        """A worker's lines: acknowledgements, and invalidations it made."""
        try:
            while line := await peer.reader.readline():
                if line == _ACK:
                    peer.acknowledged()
                    continue
                message = json.loads(line)
                if not isinstance(message, dict):
                    continue
                if message.get("op") == "metrics":
                    waiting = self._metrics.get(message.get("id"))  # type: ignore[arg-type]
                    if waiting is not None and not waiting.done():
                        waiting.set_result(dict(message.get("values") or {}))
                elif message.get("op") == "invalidate":
                    task = asyncio.get_running_loop().create_task(
                        self._invalidate_from(peer.number, message)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (OSError, ValueError):  # reset, an unreadable line, a line over the limit
            log.warning("worker %d sent something unreadable on its relay", peer.number)
        finally:
            peer.close()

    async def _invalidate_from(self, number: int, message: dict[str, Any]) -> None:
        """Apply a worker's invalidation here and in every other worker, then tell it."""
        self._origin = number
        try:
            self.rules.invalidate(
                str(message["service"]),
                str(message["host"]),
                str(message["target"]),
                float(message["at"]),
            )
        except (KeyError, TypeError, ValueError):
            log.warning("worker %d sent an unusable invalidation", number)
        finally:
            self._origin = None
        await self.settled()
        peer = self._peers.get(number)
        if peer is not None:
            peer.send([{"op": "invalidated", "id": message.get("id")}])


def _applied_at(message: dict[str, Any]) -> float:
    return float(message.get("at", float("inf")))


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class RelayFollower:
    """Another worker's side of the relay, and the observer of that worker's rules.

    `run()` says hello, then applies what worker 0 relays, acknowledging each line.
    As an observer it sends this worker's own invalidations up to worker 0 (changes
    that came from worker 0 are not sent back), and `settled()` waits until worker 0
    answers that every other worker has them (at most `RELAY_TIMEOUT` twice: a worker
    0 that cannot answer has replaced the stuck worker by then).
    """

    def __init__(
        self, rules: PurgeRules, metrics: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self.rules = rules
        self._snapshot = metrics
        rules.observer = self
        self._writer: asyncio.StreamWriter | None = None
        self._following = False
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}

    def applied(self, record: PurgeRecord, applied_at: float, *, local: bool) -> None:
        """Purges come from worker 0 only: nothing to send."""

    def expired(self, now: float, max_lifetime: float) -> None:
        """Expiry comes from worker 0 only: nothing to send."""

    def invalidated(self, service: str, host: str, target: str, applied_at: float) -> None:
        """Send this worker's invalidation up to worker 0."""
        writer = self._writer
        if self._following or writer is None or writer.is_closing():
            return
        self._next_id += 1
        self._waiting[self._next_id] = asyncio.get_running_loop().create_future()
        message = {"op": "invalidate", "id": self._next_id, "service": service, "host": host}
        writer.write(_line(message | {"target": target, "at": applied_at}))

    async def settled(self) -> None:
        """Wait until worker 0 says every worker has this worker's invalidations."""
        waiting = list(self._waiting.values())
        if waiting:
            await asyncio.wait(waiting, timeout=2 * RELAY_TIMEOUT)

    async def run(self, sock: socket.socket, ready: asyncio.Event) -> None:
        """Follow worker 0 until it closes the stream; `ready` is set once this worker
        has every rule so far."""
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**31 - 1)
        self._writer = writer
        writer.write(HELLO)
        await writer.drain()
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if message["op"] == "metrics":
                    values = self._snapshot() if self._snapshot is not None else {}
                    answer = {"op": "metrics", "id": message.get("id"), "values": values}
                    writer.write(_line(answer))
                elif message["op"] == "invalidated":
                    future = self._waiting.pop(message.get("id"), None)
                    if future is not None and not future.done():
                        future.set_result(None)
                else:
                    self._following = True
                    try:
                        _follow(message, self.rules, ready)
                    finally:
                        self._following = False
                writer.write(_ACK)
                await writer.drain()
        finally:
            self._writer = None
            for future in self._waiting.values():
                if not future.done():
                    future.set_result(None)
            self._waiting.clear()
            writer.close()


def _follow(message: dict[str, Any], rules: PurgeRules, ready: asyncio.Event) -> None:
    op = message["op"]
    if op == "apply":
        rules.apply(PurgeRecord.from_json(message["record"]), float(message["at"]))
    elif op == "local":
        rules.apply_local(PurgeRecord.from_json(message["record"]), float(message["at"]))
    elif op == "invalidate":
        rules.invalidate(
            message["service"], message["host"], message["target"], float(message["at"])
        )
    elif op == "expire":
        rules.expire(float(message["now"]), float(message["max"]))
    elif op == "batch":
        for item in message["messages"]:
            _follow(item, rules, ready)
    elif op == "ready":
        ready.set()
