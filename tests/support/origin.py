"""A real origin server for tests: scripted responses, request counts, in a thread.

Tests set what each path answers (`origin.route(...)`) and read how many requests it
saw (`origin.count(path)`); the server is a real aiohttp server on 127.0.0.1, run on
its own event loop in a thread so synchronous tests can use it beside real processes.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.ports import free_port


@dataclass
class Route:
    """What the origin answers for one path."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: generated body of this many bytes (streamed in chunks) instead of `body`
    size: int = 0
    #: seconds to wait before answering
    delay: float = 0.0
    #: seconds to wait between body chunks
    chunk_delay: float = 0.0
    #: stop after this many body bytes and drop the connection
    cut_after: int | None = None
    #: answer 304 to a matching If-None-Match
    etag: str | None = None


def pattern_bytes(size: int, offset: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes for large-body tests."""
    block = bytes((i * 31 + 7) % 251 for i in range(251))
    start = offset % 251
    out = (block * (size // 251 + 2))[start : start + size]
    return out


class OriginServer:
    """A scripted origin on 127.0.0.1, started and stopped by the test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.routes: dict[str, Route] = {}
        self.requests: Counter[str] = Counter()
        self.seen_headers: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def route(self, path: str, **kwargs: object) -> Route:
        """Set what `path` answers."""
        route = Route(**kwargs)  # type: ignore[arg-type]
        self.routes[path] = route
        return route

    def count(self, path: str) -> int:
        """Requests seen for `path` (query included as sent)."""
        return self.requests[path]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests[request.path_qs] += 1
        self.seen_headers.append(dict(request.headers))
        if request.path == "/healthz":
            return web.Response(text="ok")
        route = self.routes.get(request.path_qs) or self.routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="no such route")
        if route.delay:
            await asyncio.sleep(route.delay)
        if route.etag and request.headers.get("If-None-Match") == route.etag:
            return web.Response(status=304, headers={"ETag": route.etag, **route.headers})
        headers = dict(route.headers)
        if route.etag:
            headers["ETag"] = route.etag
        if not route.size and not route.chunk_delay and route.cut_after is None:
            return web.Response(status=route.status, headers=headers, body=route.body)
        size = route.size or len(route.body)
        headers["Content-Length"] = str(size)
        response = web.StreamResponse(status=route.status, headers=headers)
        await response.prepare(request)
        sent = 0
        chunk = 64 * 1024
        while sent < size:
            n = min(chunk, size - sent)
            data = route.body[sent : sent + n] if route.body else pattern_bytes(n, sent)
            if route.cut_after is not None and sent + n > route.cut_after:
                await response.write(data[: route.cut_after - sent])
                await asyncio.sleep(0.05)
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(data)
            sent += n
            if route.chunk_delay:
                await asyncio.sleep(route.chunk_delay)
        await response.write_eof()
        return response

    def start(self) -> OriginServer:
        """Start serving."""
        self._thread.start()

        async def setup() -> None:
            server = web.Server(self._handle, access_log=None)
            self._runner = web.ServerRunner(server)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(setup(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop serving (connections are closed)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)

    def restart(self) -> None:
        """Serve again on the same port after stop()."""

        async def setup() -> None:
            server = web.Server(self._handle, access_log=None)
            self._runner = web.ServerRunner(server)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(setup(), self._loop).result(10)

    def close(self) -> None:
        """Stop and end the thread."""
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def running_origin() -> Iterator[OriginServer]:
    """Generator for a pytest fixture: a started origin, closed afterwards."""
    origin = OriginServer().start()
    try:
        yield origin
    finally:
        origin.close()
