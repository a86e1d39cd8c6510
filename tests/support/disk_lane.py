"""An edge built in-process on a real disk store behind the HTTP/1.1 front, for the
tests of disk hits answered by the hit lane.

`running_disk_edge(tmp_path)` gives a real `Engine` on a `DiskStore` in a temp
directory, served by our own front (`edge.front.protocol.Front`) on 127.0.0.1:0 in
the test's event loop, in front of the engine harness's scripted origin (a real
aiohttp server, dated by a frozen clock). Nothing of ours is mocked; `evict(path)`
takes an object out of the memory tier (as a full tier would) so that its next hit
is a disk hit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.accesslog import AccessLog
from edge.cache.keys import primary_key
from edge.cache.purge import PurgeRecord, PurgeRules
from edge.engine import Engine, EngineOptions
from edge.front.protocol import Front
from edge.limits import ConnectionLimits
from edge.metrics import NodeMetrics
from edge.node import TierUpstream
from edge.store import DiskStore
from edge.upstream import make_session
from fleet.config import Service
from tests.support.engine_harness import HOST, SERVICE, FrozenClock, ScriptedOrigin
from tests.support.raw_client import RawResponse, parse_response, raw_exchange

__all__ = ["HOST", "DiskEdge", "running_disk_edge"]


@dataclass
class DiskEdge:
    """An engine on a disk store behind our HTTP/1.1 front, and its scripted origin."""

    engine: Engine
    store: DiskStore
    origin: ScriptedOrigin
    clock: FrozenClock
    port: int

    def key(self, path: str) -> str:
        """The primary cache key of `path` on the test's host."""
        return primary_key(SERVICE, HOST, path)

    def evict(self, path: str) -> None:
        """Take `path`'s object out of the memory tier (it stays on disk)."""
        self.store.memory.discard(self.key(path))

    async def get(self, path: str, **headers: str) -> RawResponse:
        """GET `path` on one new connection, header fields given as keywords."""
        return await self.request("GET", path, **headers)

    async def request(self, method: str, path: str, **headers: str) -> RawResponse:
        """`method path` on a connection of its own (closed after the answer), header
        fields given as keywords (If_None_Match)."""
        fields = {"Host": HOST, "Connection": "close"}
        fields.update({name.replace("_", "-"): value for name, value in headers.items()})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in fields.items()
        )
        data = await raw_exchange(f"127.0.0.1:{self.port}", (head + "\r\n").encode())
        return parse_response(data)

    def purge(self, url: str, seq: int = 1) -> None:
        """Apply a hard purge of `url` now, as a node applies one from the purge API."""
        record = PurgeRecord(seq=seq, id=f"p{seq}", service=SERVICE, urls=(url,))
        self.engine.rules.apply(record, self.clock())


@asynccontextmanager
async def running_disk_edge(
    root: Path,
    memory_bytes: int = 64 * 1024 * 1024,
    access_log: AccessLog | None = None,
    **service: Any,
) -> AsyncIterator[DiskEdge]:
    """An edge on a disk store under `root`, in front of a scripted origin; its
    front writes `access_log` when given (flushed by the test)."""
    clock = FrozenClock()
    origin = await ScriptedOrigin(clock).start()
    config = Service(name=SERVICE, hosts=(HOST,), origins=(origin.url,), **service)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(origin.stop)
        session = await stack.enter_async_context(make_session())
        store = await DiskStore.open(str(root / "cache"), 1 << 30, memory_bytes=memory_bytes)
        stack.push_async_callback(store.close)
        options = EngineOptions(node_name="edge1")
        metrics = NodeMetrics("edge1", "edge")
        engine = Engine(
            (config,),
            options,
            store,
            TierUpstream((config,), None, session),
            PurgeRules((config,)),
            metrics,
            clock=clock,
        )
        stack.push_async_callback(engine.close, 1.0)
        front = Front(engine, ConnectionLimits(100, 10.0, metrics), metrics, access_log)
        server = await asyncio.get_running_loop().create_server(front, "127.0.0.1", 0)
        stack.push_async_callback(server.wait_closed)
        stack.callback(server.close)
        port = server.sockets[0].getsockname()[1]
        yield DiskEdge(engine, store, origin, clock, port)
