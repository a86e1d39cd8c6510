"""A node's worker processes: supervised by worker 0, and kept in step on purge rules.

A node runs one process per core on a shared port (SO_REUSEPORT). Worker 0 has the
admin listener and the purge sync; it starts the other workers as child processes
(`python -m edge.workers ...`, a fresh interpreter, so a worker can be started again
at any time from a running event loop) and supervises them: a worker that exits is
reaped, logged and started again with backoff, and while fewer workers are live than
configured the node reports itself degraded (`/healthz`, `edgeshield_workers_live`).

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

The lines: worker → 0 `h` (hello, once), `k` (one per line taken), and
`{"op": "invalidate", "id", "service", "host", "target", "at"}`; 0 → worker
`{"op": "batch" | "ready" | "apply" | "local" | "invalidate" | "expire" |
"invalidated", ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge.cache.purge import PurgeRecord, PurgeRules

log = logging.getLogger("edgeshield.workers")

#: How long worker 0 waits for a worker to acknowledge a relayed rule.
RELAY_TIMEOUT = 5.0
#: How long a started worker may take to say hello before it is killed and retried.
START_TIMEOUT = 30.0
#: Restart backoff: first delay, ceiling, and how long a worker must live to reset it.
RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 10.0
RESTART_RESET_AFTER = 30.0
_HELLO = b"h\n"
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
                if isinstance(message, dict) and message.get("op") == "invalidate":
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

    def __init__(self, rules: PurgeRules) -> None:
        self.rules = rules
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
        writer.write(_HELLO)
        await writer.drain()
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if message["op"] == "invalidated":
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


@dataclass
class WorkerState:
    """What the supervisor knows about one worker."""

    number: int
    pid: int | None = None
    live: bool = False
    restarts: int = 0
    started_at: float = 0.0


class WorkerSupervisor:
    """Worker 0's side: start workers 1..n-1, and replace any that exits.

    `argv(number, fd)` is the command line of a worker given its relay socket's
    descriptor; `on_change()` runs whenever a worker becomes live or is lost (for the
    node's health report and metrics).
    """

    def __init__(
        self,
        count: int,
        relay: WorkerRelay,
        argv: Callable[[int, int], list[str]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.relay = relay
        self.workers = {n: WorkerState(n) for n in range(1, count)}
        self._argv = argv
        self._on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False

    @property
    def expected(self) -> int:
        """How many processes the node should have, worker 0 included."""
        return len(self.workers) + 1

    @property
    def live(self) -> int:
        """How many processes serve now, worker 0 included."""
        return 1 + sum(state.live for state in self.workers.values())

    @property
    def restarts(self) -> int:
        """Workers started again after one exited (since the node started)."""
        return sum(state.restarts for state in self.workers.values())

    def start(self) -> None:
        """Start every worker and keep it running."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep(n)) for n in self.workers]

    def lost(self, number: int) -> None:
        """A worker failed to take a rule: it must not serve, so kill it (it is
        replaced when its exit is seen)."""
        state = self.workers.get(number)
        if state is None:
            return
        state.live = False
        self._on_change()
        process = self._processes.get(number)
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every worker and wait for them (SIGKILL after `grace`)."""
        self._stopping = True
        for process in list(self._processes.values()):
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in list(self._processes.values()):
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.relay.close()

    async def _keep(self, number: int) -> None:
        state = self.workers[number]
        delay = RESTART_DELAY
        first = True
        while not self._stopping:
            if not first:
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                state.restarts += 1
            first = False
            state.started_at = time.monotonic()
            status = await self._run_once(state)
            if self._stopping:
                return
            lived = time.monotonic() - state.started_at
            delay = (
                RESTART_DELAY
                if lived >= RESTART_RESET_AFTER
                else min(RESTART_DELAY_MAX, delay * 2 if state.restarts else delay)
            )
            log.warning(
                "worker %d (pid %s) exited with %s after %.1fs; starting it again in %.1fs",
                number,
                state.pid,
                _describe(status),
                lived,
                delay,
            )

    async def _run_once(self, state: WorkerState) -> int | None:
        """Start one worker process, join it to the rules, wait for its exit."""
        parent_end, child_end = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv(state.number, child_end.fileno()),
                pass_fds=(child_end.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            log.exception("worker %d could not be started", state.number)
            parent_end.close()
            return None
        finally:
            child_end.close()
        self._processes[state.number] = process
        state.pid = process.pid
        try:
            streams = await self._hello(parent_end, process)
            if streams is not None and await self.relay.join(state.number, *streams):
                state.live = True
                self._on_change()
            else:  # the relay streams own the socket and are closed already
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            return await process.wait()
        finally:
            state.live = False
            self.relay.drop(state.number)
            self._processes.pop(state.number, None)
            self._on_change()

    @staticmethod
    async def _hello(
        sock: socket.socket, process: asyncio.subprocess.Process
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The worker's relay streams once it is ready to take rules; None if it
        exited or did not say hello in time."""
        sock.setblocking(False)
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            sock.close()
            return None
        loop = asyncio.get_running_loop()
        hello = loop.create_task(reader.readline())
        exited = loop.create_task(process.wait())
        try:
            done, _ = await asyncio.wait(
                {hello, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            if hello in done and hello.exception() is None and hello.result() == _HELLO:
                return reader, writer
        finally:
            for task in (hello, exited):
                task.cancel()
            await asyncio.gather(hello, exited, return_exceptions=True)
        writer.close()
        return None


def _describe(status: int | None) -> str:
    if status is None:
        return "no status"
    if status < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-status).name
    return f"status {status}"


def worker_argv(source: str, node: str, role: str, number: int, fd: int) -> list[str]:
    """The command line of worker `number` of a node (see `main`)."""
    return [
        sys.executable,
        "-m",
        "edge.workers",
        "--config",
        source,
        "--node",
        node,
        "--role",
        role,
        "--worker",
        str(number),
        "--relay-fd",
        str(fd),
        "--parent",
        str(os.getpid()),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """A worker process of a node, started by its worker 0 (not a user command)."""
    from runtime.process import die_with_parent_hook

    parser = argparse.ArgumentParser(prog="edge.workers")
    parser.add_argument("--config", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--role", choices=("edge", "shield"), required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--relay-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    hook = die_with_parent_hook()
    if hook is not None:
        hook()
    if os.getppid() != args.parent:
        return 1  # worker 0 died before the hook was in place
    from edge.node import run_worker

    return run_worker(
        args.config, args.node, args.role, args.worker, socket.socket(fileno=args.relay_fd)
    )


if __name__ == "__main__":
    sys.exit(main())
