"""The demo origin for tests: scripted routes and request counts, served from a thread.

Tests set what a path answers (`origin.route(...)`, see `demo.scripted.Route`) and read
how many requests it saw (`origin.count(path)`) and their header fields
(`origin.seen_headers`). The server is the demo origin (`demo.origin`), a real aiohttp
server on 127.0.0.1, run on its own event loop in a thread so synchronous tests can use
it beside real processes.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Iterator

from aiohttp import web

from demo.origin import STATE, make_app
from demo.scripted import Route, pattern_bytes
from tests.support.ports import free_port

__all__ = ["OriginServer", "Route", "pattern_bytes", "running_origin"]


class OriginServer:
    """The demo origin on 127.0.0.1, started and stopped by the test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.app = make_app(large_size=1024)
        self._state = self.app[STATE]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def routes(self) -> dict[str, Route]:
        """The scripted routes: path (with or without query) -> what it answers."""
        return self._state.routes

    @property
    def requests(self) -> Counter[str]:
        """Content requests seen, by path and query as sent (health checks left out)."""
        return self._state.requests

    @property
    def seen_headers(self) -> deque[dict[str, str]]:
        """The header fields of the latest content requests, oldest first."""
        return self._state.seen_headers

    def route(self, path: str, **kwargs: object) -> Route:
        """Set what `path` answers."""
        route = Route(**kwargs)  # type: ignore[arg-type]
        self.routes[path] = route
        return route

    def count(self, path: str) -> int:
        """Requests seen for `path` (query included as sent)."""
        return self.requests[path]

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> OriginServer:
        """Start serving."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop serving (connections are closed)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)

    def restart(self) -> None:
        """Serve again on the same port after stop()."""
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)

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
