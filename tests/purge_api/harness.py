"""A purge API process and real node admin servers running the real PurgeSync.

The nodes are aiohttp apps in the test process: each mounts `PurgeSync.routes()` on
its admin listener from the fleet file, exactly as an edge or shield does, and
records the order in which purges were applied (as the observer of its rules).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edge.cache.purge import PurgeRecord, PurgeRules
from edge.purge_sync import PurgeSync
from fleet.config import Fleet, load_fleet, split_host_port
from tests.support.fleetfile import TEST_TOKEN, FleetSpec
from tests.support.processes import NodeProcess

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def write_fleet(
    root: Path, *, shields: int, edges: int, purge_api_extra: str = "", extra: str = ""
) -> Fleet:
    """A fleet file with the purge API; `purge_api_extra` goes into [purge_api]."""
    spec = FleetSpec(
        root=root, origins=["http://127.0.0.1:9"], edges=edges, shields=shields, with_purge_api=True
    )
    text = spec.render().replace("[purge_api]\n", f"[purge_api]\n{purge_api_extra}\n")
    path = root / "fleet.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(text + extra, encoding="utf-8")
    return load_fleet(path)


def start_api(fleet: Fleet, root: Path, processes: list[NodeProcess]) -> NodeProcess:
    """Run `edgeshield purge-api` on the fleet and wait until it listens."""
    assert fleet.purge_api is not None
    api = NodeProcess(["purge-api", "--config", fleet.source], root / "purge-api.log").start()
    processes.append(api)
    return api.wait_listening(fleet.purge_api.listen)


@dataclass
class Applied:
    """The order purges were applied in, across every node: (node, seq, when)."""

    events: list[tuple[str, int, float]] = field(default_factory=list)

    def seqs(self, node: str) -> list[int]:
        return [seq for name, seq, _ in self.events if name == node]

    def when(self, node: str, seq: int) -> float:
        return next(at for name, s, at in self.events if name == node and s == seq)


class _Recorder:
    """The rules' observer in a test node: notes when each purge of the log is applied."""

    def __init__(self, name: str, applied: Applied) -> None:
        self.name = name
        self.events = applied.events

    def applied(self, record: PurgeRecord, applied_at: float, *, local: bool) -> None:
        if not local:
            self.events.append((self.name, record.seq, time.monotonic()))

    def invalidated(self, service: str, host: str, target: str, applied_at: float) -> None:
        pass

    def expired(self, now: float, max_lifetime: float) -> None:
        pass

    async def settled(self) -> None:
        pass


class Node:
    """One node's admin listener with the real PurgeSync mounted on it."""

    def __init__(
        self,
        fleet: Fleet,
        name: str,
        root: Path,
        applied: Applied,
        *,
        listen: str | None = None,
        startup_retry: float = 3.0,
        clock: Any = time.time,
        count: Callable[[PurgeRecord], Awaitable[int]] | None = None,
    ) -> None:
        self.fleet = fleet
        self.name = name
        self.applied = applied
        self.rules = PurgeRules(fleet.services)
        self.rules.observer = _Recorder(name, applied)
        self.state_dir = root / "state" / name
        self.sync = PurgeSync(
            fleet,
            name,
            self.rules,
            str(self.state_dir),
            count or self._count,
            clock=clock,
            startup_retry=startup_retry,
        )
        node = next(n for n in fleet.nodes if n.name == name)
        self.listen = listen or node.admin_listen
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _count(self, record: PurgeRecord) -> int:
        return len(self.name)  # a recognisable "matched" count per node

    async def start(self, *, sync: bool = True) -> Node:
        """Listen on the admin address, then run PurgeSync.start() (the catch-up)."""
        app = web.Application()
        app.add_routes(self.sync.routes())
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        host, port = split_host_port(self.listen)
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        bound = self.runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        if sync:
            await self.sync.start()
        return self

    async def stop(self) -> None:
        await self.sync.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def start_nodes(
    fleet: Fleet, root: Path, applied: Applied, names: list[str] | None = None
) -> list[Node]:
    """Start the named nodes (default: all) concurrently."""
    chosen = names if names is not None else [n.name for n in fleet.nodes]
    nodes = [Node(fleet, name, root, applied) for name in chosen]
    await asyncio.gather(*(node.start() for node in nodes))
    return nodes


async def api_call(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json: Any = None,
    data: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One HTTP call; (status, JSON body or text, headers)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, json=json, data=data) as response,
    ):
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = await response.text()
        return response.status, body, dict(response.headers)


def api_url(fleet: Fleet) -> str:
    assert fleet.purge_api is not None
    return fleet.purge_api.url
