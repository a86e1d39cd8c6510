"""A node's worker processes: supervised by worker 0, and kept in step on purge rules.

A node runs one process per core on a shared port (SO_REUSEPORT). Worker 0 has the
admin listener and the purge sync; it starts the other workers as child processes
(`python -m edge.workers ...`, a fresh interpreter, so a worker can be started again
at any time from a running event loop) and supervises them: a worker that exits is
reaped, logged and started again with backoff, and while fewer workers are live than
configured the node reports itself degraded (`/healthz`, `edgeshield_workers_live`).

Every rule worker 0 applies is relayed to the live workers over a socketpair, and
worker 0 waits for each one's acknowledgement before going on: when the node
acknowledges a purge to the API, every live process of the node has applied it. A
worker that cannot take a rule (its socket is broken, or it does not answer in time)
is no longer live: it is killed and replaced, and its replacement starts from every
rule applied so far. A worker opens its traffic listener only after it has all of
them ("ready"), so no worker serves an object a purge covers.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge.cache.purge import PurgeRecord, PurgeRules
from fleet.config import Service

log = logging.getLogger("edgeshield.workers")

#: How long worker 0 waits for a worker to acknowledge a relayed rule.
RELAY_TIMEOUT = 5.0
#: How long a started worker may take to say hello before it is killed and retried.
START_TIMEOUT = 30.0
#: Restart backoff: first delay, ceiling, and how long a worker must live to reset it.
RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 10.0
RESTART_RESET_AFTER = 30.0
_HELLO = b"h"


class RelayingRules(PurgeRules):
    """Worker 0's rules: every change is applied here and in every live worker.

    Every relayed change is also kept (`history`) so a worker that joins later, a
    replacement included, starts from exactly the rules worker 0 has. `peers` are
    workers that have joined already (numbered from 1); `on_lost(number)` is told of
    a worker that failed to take a rule and was dropped.
    """

    def __init__(
        self,
        services: Sequence[Service],
        peers: Sequence[socket.socket] = (),
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(services)
        self._peers: dict[int, socket.socket] = {}
        self._history: list[dict[str, Any]] = []
        self._on_lost = on_lost
        for number, peer in enumerate(peers, start=1):
            self._peers[number] = _blocking(peer)

    @property
    def live_peers(self) -> list[int]:
        """The workers (by number) that take every rule."""
        return sorted(self._peers)

    def apply(self, record: PurgeRecord, applied_at: float) -> None:
        """Apply a purge here and in every worker, in sequence order."""
        super().apply(record, applied_at)
        self._relay({"op": "apply", "record": record.to_json(), "at": applied_at})

    def apply_local(self, record: PurgeRecord, applied_at: float) -> None:
        """Apply a rule outside the log here and in every worker."""
        super().apply_local(record, applied_at)
        self._relay({"op": "local", "record": record.to_json(), "at": applied_at})

    def expire(self, now: float, max_lifetime: float) -> int:
        """Drop old rules here and in every worker (and from what a new worker gets)."""
        dropped = super().expire(now, max_lifetime)
        cutoff = now - max_lifetime
        self._history = [m for m in self._history if _applied_at(m) >= cutoff]
        self._relay({"op": "expire", "now": now, "max": max_lifetime}, keep=False)
        return dropped

    def join(self, number: int, peer: socket.socket) -> bool:
        """Give a (re)started worker every rule so far, then let it serve; from now on
        it takes every change. False (and the worker is dropped) if it failed."""
        peer = _blocking(peer)
        messages: list[dict[str, object]] = [
            {"op": "batch", "messages": self._history},
            {"op": "ready"},
        ]
        if not _send(peer, messages):
            with contextlib.suppress(OSError):
                peer.close()
            return False
        self._peers[number] = peer
        return True

    def drop(self, number: int) -> None:
        """Forget a worker that exited (its socket is closed)."""
        peer = self._peers.pop(number, None)
        if peer is not None:
            with contextlib.suppress(OSError):
                peer.close()

    def _relay(self, message: dict[str, Any], *, keep: bool = True) -> None:
        # Blocking on purpose: a purge is not acknowledged before every live worker has
        # it, and purges are rare next to requests. A worker that fails to take it is
        # dropped and reported, so it is killed and replaced (it starts from history).
        if keep:
            self._history.append(message)
        for number, peer in list(self._peers.items()):
            if not _send(peer, [message]):
                log.warning("worker %d did not take a purge rule; replacing it", number)
                self.drop(number)
                if self._on_lost is not None:
                    self._on_lost(number)


def _applied_at(message: dict[str, Any]) -> float:
    return float(message.get("at", float("inf")))


def _blocking(peer: socket.socket) -> socket.socket:
    peer.setblocking(True)
    peer.settimeout(RELAY_TIMEOUT)
    return peer


def _send(peer: socket.socket, messages: list[dict[str, object]]) -> bool:
    """Send lines and read one acknowledgement per line; False on any failure."""
    try:
        peer.sendall(b"".join((json.dumps(m) + "\n").encode() for m in messages))
        for _ in messages:
            if peer.recv(1) != b"k":
                return False
    except OSError:  # broken pipe, reset, timeout
        return False
    return True


async def follow_relayed_rules(
    sock: socket.socket, rules: PurgeRules, ready: asyncio.Event
) -> None:
    """Another worker's side: say hello, then apply what worker 0 relays, acknowledging
    each line."""
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**31 - 1)
    writer.write(_HELLO)
    await writer.drain()
    while True:
        line = await reader.readline()
        if not line:
            return
        _follow(json.loads(line), rules, ready)
        writer.write(b"k")
        await writer.drain()


def _follow(message: dict[str, Any], rules: PurgeRules, ready: asyncio.Event) -> None:
    op = message["op"]
    if op == "apply":
        rules.apply(PurgeRecord.from_json(message["record"]), float(message["at"]))
    elif op == "local":
        rules.apply_local(PurgeRecord.from_json(message["record"]), float(message["at"]))
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
        rules: RelayingRules,
        argv: Callable[[int, int], list[str]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.rules = rules
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
            if await self._hello(parent_end, process) and self.rules.join(state.number, parent_end):
                state.live = True
                self._on_change()
            else:
                parent_end.close()
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            return await process.wait()
        finally:
            state.live = False
            self.rules.drop(state.number)
            self._processes.pop(state.number, None)
            self._on_change()

    @staticmethod
    async def _hello(sock: socket.socket, process: asyncio.subprocess.Process) -> bool:
        """Wait until the worker is ready to take rules (or has exited)."""
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        hello = loop.create_task(loop.sock_recv(sock, 1))
        exited = loop.create_task(process.wait())
        try:
            done, _ = await asyncio.wait(
                {hello, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            return hello in done and hello.result() == _HELLO
        except OSError:
            return False
        finally:
            for task in (hello, exited):
                task.cancel()
            await asyncio.gather(hello, exited, return_exceptions=True)


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
