"""A node's worker processes: supervised by worker 0, and kept in step on purge rules.

A node runs one process per core on a shared port (SO_REUSEPORT). Worker 0 has the
admin listener and the purge sync; it starts the other workers as child processes
(`python -m edge.workers ...`, a fresh interpreter, so a worker can be started again
at any time from a running event loop) and supervises them: a worker that exits is
reaped, logged and started again with backoff, and while fewer workers are live than
configured the node reports itself degraded (`/healthz`, `edgeshield_workers_live`).

Worker 0 and the others keep in step over a relay (see edge.relay): purge rules
down, a worker's own invalidations up, and each worker's metric values on a scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge.relay import HELLO, RelayFollower, WorkerRelay

__all__ = ["RelayFollower", "WorkerRelay", "WorkerState", "WorkerSupervisor", "main", "worker_argv"]

log = logging.getLogger("edgeshield.workers")

#: How long a started worker may take to say hello before it is killed and retried.
START_TIMEOUT = 30.0
#: Restart backoff: first delay, ceiling, and how long a worker must live to reset it.
RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 10.0
RESTART_RESET_AFTER = 30.0


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

    def signal_all(self, signum: int) -> None:
        """Send `signum` to every running worker (SIGHUP: reload the fleet file)."""
        for process in list(self._processes.values()):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

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
            if hello in done and hello.exception() is None and hello.result() == HELLO:
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
