"""The supervisor of `edgeshield up`: one child process per node, watched and restarted.

Each child's output is printed with its node name in front; a child that dies is
restarted with backoff; stopping sends SIGTERM to each child's process group and
SIGKILL after a grace period, so nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from cli.plan import HealthCheck, NodeSpec
from runtime.errors import exit_status
from runtime.process import die_with_parent_hook

__all__ = ["STARTUP_TIMEOUT", "STOP_GRACE", "Supervisor", "Write"]

STARTUP_TIMEOUT = 60.0  # seconds for one node to become healthy
STARTUP_ATTEMPTS = 3  # exits before first health after which `up` gives up
#: a child's exit status for "cannot start as configured" (cli.main's), never retried
EXIT_CANNOT_START = 2
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0  # a child that ran this long restarts with the first backoff again
LINE_LIMIT = 1024 * 1024

Write = Callable[[str], None]


@dataclass
class _Node:
    spec: NodeSpec
    proc: asyncio.subprocess.Process | None = None
    healthy: bool = False
    ever_healthy: bool = False
    gave_up: str = ""
    starts: int = 0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs node processes: starts them in stages, watches, restarts, and stops them."""

    def __init__(
        self, specs: Sequence[NodeSpec], env: Mapping[str, str], log_dir: Path | None, write: Write
    ) -> None:
        self.nodes = [_Node(spec) for spec in specs]
        self.env = dict(env)
        self.log_dir = log_dir
        self.write = write
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._helpers: set[asyncio.Task[None]] = set()
        self._width = max((len(spec.name) for spec in specs), default=4)
        self._preexec = die_with_parent_hook()

    def node(self, name: str) -> _Node:
        """The running record of node `name`."""
        return next(n for n in self.nodes if n.spec.name == name)

    @property
    def all_pids(self) -> list[int]:
        """Every PID any child ever had, restarts included."""
        return [pid for node in self.nodes for pid in node.pids]

    async def start(self, timeout: float = STARTUP_TIMEOUT) -> bool:
        """Start stage after stage; True once every node is healthy, False on failure."""
        for stage in sorted({node.spec.stage for node in self.nodes}):
            group = [node for node in self.nodes if node.spec.stage == stage]
            for node in group:
                self._tasks.append(asyncio.create_task(self._keep_running(node)))
            results = await asyncio.gather(*(self._wait_healthy(n, timeout) for n in group))
            if not all(results):
                return False
        return True

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every child's process group, SIGKILL what is left after `grace`."""
        self.stopping.set()
        running = [node.proc for node in self.nodes if node.proc is not None]
        for proc in running:
            _signal_group(proc.pid, signal.SIGTERM)
        if running:
            waits = [asyncio.create_task(proc.wait()) for proc in running]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for proc in running:
                if proc.returncode is None:
                    self.say(f"{self._name_of(proc)} did not stop in {grace:g}s; killing it")
                # Whatever the leader did, take its whole group (worker processes) with it.
                _signal_group(proc.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Let the relays print what the children said last, then drop what remains.
        if self._helpers:
            await asyncio.wait(self._helpers, timeout=2.0)
        for task in self._helpers:
            task.cancel()

    def _name_of(self, proc: asyncio.subprocess.Process) -> str:
        return next((n.spec.name for n in self.nodes if n.proc is proc), "?")

    def say(self, message: str) -> None:
        """A line from `up` itself."""
        self.write(f"edgeshield: {message}")

    async def _keep_running(self, node: _Node) -> None:
        backoff = BACKOFF_FIRST
        while not self.stopping.is_set():
            try:
                proc = await self._spawn(node)
            except OSError as exc:
                node.gave_up = f"cannot start: {exc}"
                self.say(f"{node.spec.name} {node.gave_up}")
                return
            began = time.monotonic()
            if node.starts > 1:
                self._helper(self._announce_recovery(node, proc))
            code = await proc.wait()
            node.healthy = False
            # A worker left behind by a dead leader would hold the port.
            _signal_group(proc.pid, signal.SIGKILL)
            if self.stopping.is_set():
                return
            if time.monotonic() - began > STABLE_AFTER:
                backoff = BACKOFF_FIRST
            if code == EXIT_CANNOT_START:
                # a bad file or a taken port does not mend itself: no restarts
                node.gave_up = "cannot start as configured (its message is above)"
                return
            if not node.ever_healthy and node.starts >= STARTUP_ATTEMPTS:
                node.gave_up = (
                    f"{exit_status(code)} on the last of {node.starts} starts "
                    "(its messages are above)"
                )
                return
            self.say(f"{node.spec.name} {exit_status(code)}; restarting in {backoff:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _spawn(self, node: _Node) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *node.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            start_new_session=True,
            preexec_fn=self._preexec,
            limit=LINE_LIMIT,
        )
        node.proc = proc
        node.starts += 1
        node.pids.append(proc.pid)
        self.say(f"started {node.spec.name} pid {proc.pid}")
        log: BinaryIO | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{node.spec.name}.log", "ab")  # noqa: SIM115
        streams = [s for s in (proc.stdout, proc.stderr) if s is not None]
        self._helper(self._relay(node.spec.name, streams, log))
        return proc

    def _helper(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    async def _relay(
        self, name: str, streams: list[asyncio.StreamReader], log: BinaryIO | None
    ) -> None:
        """Print each line of the child's output with its name in front (and log it)."""
        prefix = f"{name:<{self._width}} | "
        try:
            await asyncio.gather(*(self._relay_one(prefix, s, log) for s in streams))
        finally:
            if log is not None:
                log.close()

    async def _relay_one(
        self, prefix: str, stream: asyncio.StreamReader, log: BinaryIO | None
    ) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than LINE_LIMIT was dropped
                continue
            if not line:
                return
            if log is not None:
                # Small appends to a local file; not worth an executor round trip.
                log.write(line)
                log.flush()
            self.write(prefix + line.decode(errors="replace").rstrip("\r\n"))

    async def _wait_healthy(self, node: _Node, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while not self.stopping.is_set():
                if node.gave_up:
                    self.say(f"{node.spec.name} failed: {node.gave_up}")
                    return False
                if (
                    node.proc is not None
                    and node.proc.returncode is None
                    and await _is_healthy(session, node.spec.health)
                ):
                    node.healthy = node.ever_healthy = True
                    return True
                if time.monotonic() > deadline:
                    self.say(f"{node.spec.name} failed: not healthy after {timeout:g}s")
                    return False
                await asyncio.sleep(0.1)
        return False

    async def _announce_recovery(self, node: _Node, proc: asyncio.subprocess.Process) -> None:
        """After a restart, say when the node is healthy again."""
        async with aiohttp.ClientSession() as session:
            while proc.returncode is None and not self.stopping.is_set():
                if await _is_healthy(session, node.spec.health):
                    node.healthy = node.ever_healthy = True
                    self.say(f"{node.spec.name} is healthy again (pid {proc.pid})")
                    return
                await asyncio.sleep(0.2)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group a child leads (its own session); gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _is_healthy(session: aiohttp.ClientSession, check: HealthCheck) -> bool:
    host, port = check.tcp
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    if not check.http_url:
        return True
    try:
        async with session.get(
            check.http_url, headers=dict(check.headers), timeout=aiohttp.ClientTimeout(total=2.0)
        ) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
