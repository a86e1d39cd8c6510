"""aiohttp's low-level server as one front: its request in, our types to the engine.

`answer(engine, request)` runs one request through the engine and returns aiohttp's
response and the request's Outcome; `aiohttp_handler(engine)` is the handler to give
`web.Server` (or `LimitedServer`) to serve an Engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from edge.front.types import RequestHead
from edge.outcome import Outcome

if TYPE_CHECKING:
    from edge.engine import Engine


def request_head(request: web.BaseRequest) -> RequestHead:
    """Our request head of an aiohttp request."""
    return RequestHead(
        method=request.method,
        target=request.raw_path,
        headers=request.headers,
        peer=request.remote,
        scheme=request.scheme,
        version=(request.version.major, request.version.minor),
    )


class AiohttpBody:
    """An aiohttp request's body as a `BodyStream`."""

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request

    @property
    def exists(self) -> bool:
        """Whether the request has a body."""
        return self._request.body_exists

    @property
    def length(self) -> int | None:
        """The declared Content-Length, if any."""
        return self._request.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        async for chunk in self._request.content.iter_any():
            yield chunk


class AiohttpSink:
    """A `ResponseSink` onto aiohttp's responses; `response` is what the handler returns."""

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self.response: web.StreamResponse | None = None

    def send(
        self,
        status: int,
        headers: CIMultiDict[str],
        body: bytes | None = None,
        *,
        close: bool = False,
    ) -> None:
        """A whole answer: aiohttp frames and sends it once the handler returns."""
        response = web.Response(status=status, headers=headers, body=body)
        if close:
            response.force_close()
        self.response = response

    async def start(self, status: int, headers: CIMultiDict[str]) -> None:
        """Send the head of a streamed answer."""
        response = web.StreamResponse(status=status, headers=headers)
        self.response = response
        await response.prepare(self._request)

    async def write(self, chunk: bytes) -> None:
        """Send body bytes (drains the transport)."""
        assert self.response is not None
        await self.response.write(chunk)

    async def end(self) -> None:
        """Finish the streamed answer."""
        assert self.response is not None
        await self.response.write_eof()

    def abort(self) -> None:
        """Close the connection under the answer."""
        if self._request.transport is not None:
            self._request.transport.close()


async def answer(engine: Engine, request: web.BaseRequest) -> tuple[web.StreamResponse, Outcome]:
    """Run one aiohttp request through `engine`: aiohttp's response and the Outcome."""
    sink = AiohttpSink(request)
    outcome = await engine.handle(request_head(request), AiohttpBody(request), sink)
    if sink.response is None:
        raise RuntimeError("the engine returned without answering")
    return sink.response, outcome


def aiohttp_handler(engine: Engine) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The handler that serves `engine` on aiohttp's low-level server:
    `web.Server(aiohttp_handler(engine))`."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response, _ = await answer(engine, request)
        return response

    return handler
