"""A cache engine built in-process, for tests that read like RFC 9111.

`CacheUnderTest` is a real `Engine` with a `MemoryStore`, a frozen clock, real purge
rules and the node's real upstream (`TierUpstream`, an `OriginPool`) talking to a
scripted origin: a real aiohttp server on 127.0.0.1:0 in the test's own event loop.
Clients are an aiohttp session talking to the engine served in-process on
127.0.0.1:0. Nothing of ours is mocked; time moves only when a test says so:

    cache.origin.responds("/page", cache_control="max-age=60", body=b"v1")
    (await cache.get("/page")).assert_stored()
    cache.clock.advance(30)
    (await cache.get("/page")).assert_hit(age=30)

The origin dates its answers by the same frozen clock, so ages are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy

from demo.scripted import Route, answer
from edge.cache.dates import format_http_date
from edge.cache.keys import primary_key
from edge.cache.purge import PurgeRecord, PurgeRules
from edge.engine import Engine, EngineOptions
from edge.forwarding import node_token
from edge.front.aiohttp_adapter import aiohttp_handler
from edge.metrics import NodeMetrics
from edge.node import TierUpstream
from edge.store import MemoryStore, StoredEntry
from edge.upstream import ShieldRing, make_session
from fleet.config import Service, ShieldConfig
from tests.support.waiting import eventually

__all__ = [
    "HOST",
    "CacheUnderTest",
    "CloseDelimitedOrigin",
    "FrozenClock",
    "Reply",
    "ScriptedOrigin",
    "Tiers",
    "background_work",
    "engine_handler",
    "running_cache",
    "running_tiers",
    "until",
]

HOST = "www.example.com"
SERVICE = "site"
#: how long a test waits for background work (a revalidation, compressed variants)
BACKGROUND_TIMEOUT = 10.0

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def engine_handler(engine: Engine) -> Handler:
    """The one place where an `Engine` becomes an aiohttp request handler: the aiohttp
    front's adapter, as a node serves it (less the node's logs and metrics)."""
    return aiohttp_handler(engine)


def background_work(engine: Engine) -> int:
    """How many background tasks the engine has under way (fills, revalidations,
    compressed variants)."""
    return engine.filler.background_tasks


class FrozenClock:
    """A clock that stands still until a test moves it (seconds since the epoch)."""

    def __init__(self, start: float | None = None) -> None:
        # whole seconds, so the origin's Date (one-second resolution) is exact
        self.now = float(int(start if start is not None else time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        self.now += seconds


class ScriptedOrigin:
    """An origin whose answer per path a test sets; counts what it is asked.

    A real aiohttp server on 127.0.0.1:0 in the running event loop. Answers are
    `demo.scripted.Route`s (status, headers, body, a 304 for a matching ETag), dated
    by the frozen clock unless the route sets Date. A path may be held (`hold`) until
    the test releases it, to have requests meet in flight without timing guesses.
    """

    def __init__(self, clock: FrozenClock) -> None:
        self.clock = clock
        self.routes: dict[str, Route] = {}
        self.requests: Counter[str] = Counter()
        self.seen: list[tuple[str, str, CIMultiDictProxy[str]]] = []
        self.arrived = asyncio.Event()
        self._gates: dict[str, asyncio.Event] = {}
        self._runner: web.ServerRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ScriptedOrigin:
        """Listen (again, on the same port after `stop`)."""
        self._runner = web.ServerRunner(web.Server(self._handle), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop listening: connections to it are refused (an unreachable origin)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def responds(
        self,
        path: str,
        status: int = 200,
        /,
        *,
        cache_control: str | None = None,
        body: bytes = b"",
        etag: str | None = None,
        **headers: str,
    ) -> Route:
        """Set what `path` answers; header names are given as keywords (Content_Type)."""
        fields = {name.replace("_", "-"): value for name, value in headers.items()}
        if cache_control is not None:
            fields["Cache-Control"] = cache_control
        route = Route(status=status, headers=fields, body=body, etag=etag)
        self.routes[path] = route
        return route

    def hold(self, path: str) -> asyncio.Event:
        """Requests for `path` wait at the origin until the returned event is set."""
        gate = asyncio.Event()
        self._gates[path] = gate
        return gate

    def count(self, path: str) -> int:
        """Requests the origin saw for `path` (with its query, as sent)."""
        return self.requests[path]

    def last_headers(self, path: str) -> CIMultiDictProxy[str]:
        """The header fields of the latest request for `path`."""
        return [headers for _, seen_path, headers in self.seen if seen_path == path][-1]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests[request.path_qs] += 1
        self.seen.append((request.method, request.path_qs, request.headers))
        self.arrived.set()
        gate = self._gates.get(request.path)
        if gate is not None:
            await gate.wait()
        if request.method not in ("GET", "HEAD"):
            await request.read()
        route = self.routes.get(request.path_qs) or self.routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="no such route\n")
        if "Date" not in route.headers:
            route = dataclasses.replace(
                route, headers={"Date": format_http_date(self.clock()), **route.headers}
            )
        return await answer(request, route)


class CloseDelimitedOrigin:
    """An origin whose every answer is a body framed by the connection's close
    (no Content-Length, not chunked: RFC 9112 6.3 item 8)."""

    def __init__(self, head: str, body: bytes) -> None:
        self.head = head
        self.body = body
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The origin's base URL."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> CloseDelimitedOrigin:
        """Listen on 127.0.0.1:0."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(f"HTTP/1.1 200 OK\r\n{self.head}\r\n\r\n".encode("latin-1") + self.body)
            await writer.drain()
        finally:
            writer.close()


@dataclasses.dataclass
class Reply:
    """A client's answer, with assertions named after what the cache did."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def tiers(self) -> list[str]:
        """Each tier's Cache-Status entry, the one nearest the origin first."""
        return [e for e in self.headers.get("Cache-Status", "").split(", ") if e]

    @property
    def cache_status(self) -> str:
        """This node's Cache-Status entry (the last one)."""
        return self.headers.get("Cache-Status", "").rpartition(", ")[2]

    def assert_status(self, status: int) -> Reply:
        """The status is `status`."""
        assert self.status == status, (self.status, self.cache_status, self.body[:200])
        return self

    def assert_body(self, body: bytes) -> Reply:
        """The body is `body`."""
        assert self.body == body, self.body[:200]
        return self

    def assert_says(self, *tokens: str) -> Reply:
        """This node's Cache-Status entry has each of `tokens` (RFC 9211)."""
        for token in tokens:
            assert token in self.cache_status, (token, self.cache_status)
        return self

    def assert_stored(self) -> Reply:
        """A miss whose answer the cache stored."""
        return self.assert_says("fwd=", "stored")

    def assert_not_stored(self, why: str) -> Reply:
        """A miss passed on unstored, saying `why`."""
        assert "stored" not in self.cache_status.replace("not-stored", ""), self.cache_status
        return self.assert_says("fwd=", f"detail={why}")

    def assert_hit(self, *, age: int | None = None) -> Reply:
        """Served from the cache without asking upstream (and with this Age)."""
        assert "; hit" in self.cache_status and "fwd=" not in self.cache_status, self.cache_status
        if age is not None:
            assert self.headers["Age"] == str(age), (self.headers["Age"], age)
        return self

    def assert_stale(self, detail: str) -> Reply:
        """Served stale from the cache, saying why (`detail`)."""
        return self.assert_says(f"detail={detail}")


class CacheUnderTest:
    """An engine, its store, its origin, its clock and a client: one cache to test."""

    def __init__(
        self,
        engine: Engine,
        store: MemoryStore,
        origin: ScriptedOrigin,
        clock: FrozenClock,
        client: aiohttp.ClientSession,
        base: str,
    ) -> None:
        self.engine = engine
        self.store = store
        self.origin = origin
        self.clock = clock
        self.client = client
        self.base = base
        self._purges = 0

    @property
    def rules(self) -> PurgeRules:
        """The purge rules the engine applies at lookup."""
        return self.engine.rules

    async def request(self, method: str, path: str, **headers: str) -> Reply:
        """Send `method path` with header fields given as keywords (Accept_Encoding)."""
        fields = {"Host": HOST, "Accept-Encoding": "identity"}
        fields.update({name.replace("_", "-"): value for name, value in headers.items()})
        async with self.client.request(method, self.base + path, headers=fields) as response:
            body = await response.read()
            return Reply(response.status, response.headers, body)

    async def get(self, path: str, **headers: str) -> Reply:
        """GET `path`."""
        return await self.request("GET", path, **headers)

    def purge(
        self,
        *,
        urls: tuple[str, ...] = (),
        prefixes: tuple[str, ...] = (),
        tags: tuple[str, ...] = (),
        everything: bool = False,
        soft: bool = False,
    ) -> None:
        """Apply a purge now, as a node applies one received from the purge API."""
        self._purges += 1
        record = PurgeRecord(
            seq=self._purges,
            id=f"p{self._purges}",
            service=SERVICE,
            urls=urls,
            prefixes=prefixes,
            tags=tags,
            all=everything,
            soft=soft,
        )
        self.rules.apply(record, self.clock())

    def stored(self, path: str) -> StoredEntry | None:
        """What the store holds under `path`'s primary key."""
        return self.store.peek(primary_key(SERVICE, HOST, path))

    async def background_done(self) -> None:
        """Wait (bounded) for the engine's background work: fills, revalidations,
        compressed variants."""
        await until(lambda: not background_work(self.engine), "the engine's background work")


async def until(check: Callable[[], bool], what: str, timeout: float = BACKGROUND_TIMEOUT) -> None:
    """Wait for `check` to hold (the shared poll loop, polled often: the work waited
    for runs in this process); fail naming `what` after `timeout`."""
    await eventually(check, what, timeout, interval=0.005)


@asynccontextmanager
async def running_cache(
    *,
    options: EngineOptions | None = None,
    max_bytes: int = 64 * 1024 * 1024,
    origin_url: str | None = None,
    **service: Any,
) -> AsyncIterator[CacheUnderTest]:
    """A cache with one service (`HOST`) in front of a scripted origin; `service`
    overrides fields of that `Service`; `origin_url` puts another origin behind it."""
    clock = FrozenClock()
    origin = await ScriptedOrigin(clock).start()
    config = Service(name=SERVICE, hosts=(HOST,), origins=(origin_url or origin.url,), **service)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(origin.stop)
        session = await stack.enter_async_context(make_session())
        upstream = TierUpstream((config,), None, session)
        options = options or EngineOptions(node_name="edge1")
        yield await _node(stack, config, options, upstream, origin, clock, max_bytes)


@dataclasses.dataclass
class Tiers:
    """A shield and edges in front of one scripted origin, on one frozen clock."""

    origin: ScriptedOrigin
    clock: FrozenClock
    shield: CacheUnderTest
    edges: list[CacheUnderTest]


@asynccontextmanager
async def running_tiers(*, edges: int = 1, **service: Any) -> AsyncIterator[Tiers]:
    """A shield ("shield1") and `edges` edges ("edge1", ...) that reach it through the
    real shield ring, as a fleet's nodes do; `service` overrides fields of `Service`."""
    clock = FrozenClock()
    origin = await ScriptedOrigin(clock).start()
    config = Service(name=SERVICE, hosts=(HOST,), origins=(origin.url,), **service)
    secret = "engine-harness-secret"
    async with AsyncExitStack() as stack:
        stack.push_async_callback(origin.stop)
        session = await stack.enter_async_context(make_session())
        shield_options = EngineOptions(
            node_name="shield1",
            compress=False,
            downstream_is_cdn=True,
            mark_stale=True,
            node_token=node_token(secret),
        )
        shield = await _node(
            stack, config, shield_options, TierUpstream((config,), None, session), origin, clock
        )
        port = int(shield.base.rpartition(":")[2])
        shield_config = ShieldConfig(
            name="shield1",
            region="here",
            listen=f"127.0.0.1:{port}",
            admin_listen="127.0.0.1:0",
            cache_dir="",
            cache_size=64 * 1024 * 1024,
        )
        ring = ShieldRing((shield_config,), session, secret)
        edge_nodes = [
            await _node(
                stack,
                config,
                EngineOptions(node_name=f"edge{n}"),
                TierUpstream((config,), ring, session),
                origin,
                clock,
            )
            for n in range(1, edges + 1)
        ]
        yield Tiers(origin, clock, shield, edge_nodes)


async def _node(
    stack: AsyncExitStack,
    service: Service,
    options: EngineOptions,
    upstream: TierUpstream,
    origin: ScriptedOrigin,
    clock: FrozenClock,
    max_bytes: int = 64 * 1024 * 1024,
) -> CacheUnderTest:
    """One node's engine served in-process on 127.0.0.1:0, and a client for it; all
    closed by `stack`."""
    store = MemoryStore(max_bytes=max_bytes)
    stack.push_async_callback(store.close)
    engine = Engine(
        (service,),
        options,
        store,
        upstream,
        PurgeRules((service,)),
        NodeMetrics(options.node_name, "shield" if options.downstream_is_cdn else "edge"),
        clock=clock,
    )
    stack.push_async_callback(engine.close, 1.0)
    runner = web.ServerRunner(web.Server(engine_handler(engine)), handle_signals=False)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    client = await stack.enter_async_context(aiohttp.ClientSession(auto_decompress=False))
    return CacheUnderTest(engine, store, origin, clock, client, base)
