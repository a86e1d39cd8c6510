"""aiohttp's low-level server as one front: its request in, our types to the engine.

`answer(engine, request)` runs one request through the engine and returns aiohttp's
response and the request's Outcome; `aiohttp_handler(engine)` is the handler to give
`web.Server` to serve an Engine; `traffic_handler` is the node's (metrics and the
access log added). `LimitedServer` is aiohttp's low-level server whose connection
protocol counts itself in and out of `ConnectionLimits` (the policy is
`edge.limits`), answers 503 and closes when over the cap, stamps the first byte of
each request head and clears the stamp when aiohttp's parser has the head, and
answers a request the parser refused with a short 4xx body (aiohttp's own echoes the
offending bytes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http import HttpProcessingError, HttpVersion10, HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

from edge.accesslog import AccessLog, has_safe_id, request_id
from edge.front.https_policy import HTTPS_REDIRECT, HttpsPolicy
from edge.front.types import RequestHead
from edge.limits import NO_HEAD, REFUSED_RESPONSE, ConnectionLimits
from edge.metrics import NodeMetrics
from edge.outcome import Outcome, refused
from edge.upstream import GENERATED_ERROR_HEADER
from runtime.http_errors import TerseRequestHandler

if TYPE_CHECKING:
    from edge.engine import Engine

log = logging.getLogger("edgeshield.node")


def request_head(request: web.BaseRequest) -> RequestHead:
    """Our request head of an aiohttp request."""
    headers: CIMultiDictProxy[str] | CIMultiDict[str] = request.headers
    if not has_safe_id(headers):
        # aiohttp's fields are read-only: a copy carries the id this node makes
        headers = CIMultiDict(headers)
        request_id(headers)
    # positional: this runs on every request
    return RequestHead(
        request.method,
        request.raw_path,
        headers,
        request.remote,
        request.scheme,
        request.version,
    )


class AiohttpBody:
    """An aiohttp request's body as a `BodyStream`."""

    __slots__ = ("_request",)

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

    __slots__ = ("_request", "hsts", "response")

    def __init__(self, request: web.BaseRequest, hsts: str | None = None) -> None:
        self._request = request
        self.response: web.StreamResponse | None = None
        #: Strict-Transport-Security for every answer (edge/front/https_policy.py)
        self.hsts = hsts

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
        if self.hsts is not None:
            response.headers["Strict-Transport-Security"] = self.hsts
        if close:
            response.force_close()
        self.response = response

    async def start(self, status: int, headers: CIMultiDict[str]) -> None:
        """Send the head of a streamed answer."""
        response = web.StreamResponse(status=status, headers=headers)
        if self.hsts is not None:
            response.headers["Strict-Transport-Security"] = self.hsts
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

    def informational(self, status: int, headers: CIMultiDict[str]) -> None:
        """A 1xx head written to the transport ahead of aiohttp's own (which has no
        way to send one); only while no final head has been started."""
        transport = self._request.transport
        if (
            self.response is not None
            or transport is None
            or transport.is_closing()
            or self._request.version < HttpVersion11
        ):
            return
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Informational')}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


async def answer(
    engine: Engine, request: web.BaseRequest, https: HttpsPolicy | None = None
) -> tuple[web.StreamResponse, Outcome, str]:
    """Run one aiohttp request through `engine`: aiohttp's response, the Outcome and
    the request's id (`https`: the services' https_redirect and HSTS, when any service
    has them)."""
    head = request_head(request)
    rid = request_id(head.headers)
    sink = AiohttpSink(request)
    if https is not None:
        redirect = https.redirect(head)
        if redirect is not None:
            status, headers, body = redirect
            return web.Response(status=status, headers=headers, body=body), HTTPS_REDIRECT, rid
        sink.hsts = https.hsts(head)
    outcome = await engine.handle(head, AiohttpBody(request), sink)
    if sink.response is None:
        raise RuntimeError("the engine returned without answering")
    return sink.response, outcome, rid


def aiohttp_handler(engine: Engine) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The handler that serves `engine` on aiohttp's low-level server:
    `web.Server(aiohttp_handler(engine))`."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response, _, _ = await answer(engine, request)
        return response

    return handler


def traffic_handler(
    engine: Engine,
    access_log: AccessLog | None,
    metrics: NodeMetrics,
    https: HttpsPolicy | None = None,
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The node's handler of client traffic: the engine's answer, its latency counted
    in the histogram of its Outcome, and an access-log line."""
    record = access_log.record if access_log is not None else None
    https = https if https is not None and https.active else None
    clock = time.time

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        started = clock()
        rid: str | None = None
        try:
            response, outcome, rid = await answer(engine, request, https)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("request %s %s failed", request.method, request.raw_path)
            # "node": this node itself failed, so an edge may try another shield
            response = web.Response(
                status=500, text="500 internal error\n", headers={GENERATED_ERROR_HEADER: "node"}
            )
            outcome = refused("internal-error")
        elapsed = clock() - started
        metrics.responded(request.headers.get("Host"), response.status)
        if outcome.hit:
            metrics.hit_seconds.observe(elapsed)
        else:
            metrics.miss_seconds.observe(elapsed)
        if record is not None:
            record(
                (
                    started,
                    request.method,
                    request.headers.get("Host"),
                    request.raw_path,
                    response.status,
                    outcome,
                    response.content_length,
                    elapsed,
                    request.remote,
                    "https/1.1" if request.secure else "http/1.1",
                    request.headers.get("User-Agent"),
                    request.headers.get("Referer"),
                    rid if rid is not None else request.headers.get("X-Request-ID"),
                )
            )
        return response

    return handler


#: Reason phrases of the 1xx heads `AiohttpSink.informational` writes.
_REASONS = {102: "Processing", 103: "Early Hints"}

limits_log = logging.getLogger("edgeshield.limits")

_HTTP_1 = (HttpVersion11, HttpVersion10)


class _LimitedHandler(TerseRequestHandler):
    """aiohttp's connection protocol with the cap, the head stamp and short 4xx bodies."""

    __slots__ = ("_last_payload", "_limits", "_refused", "head_since", "idle_since")

    def __init__(self, manager: web.Server, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._refused = False
        self._last_payload: Any = None
        self.head_since = NO_HEAD
        # aiohttp runs its own keep-alive timer
        self.idle_since = NO_HEAD

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Over the cap: a 503 and a close, before aiohttp sees the connection."""
        if not self._limits.admit(self):
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            transport.write(REFUSED_RESPONSE)
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Count the connection out."""
        if self._refused:
            return
        self._limits.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Stamp the first byte of a head; clear the stamp when the parser has a head."""
        if self.head_since == NO_HEAD and (
            self._last_payload is None or self._last_payload.is_eof()
        ):
            # bytes while no request body is being read: the start of the next head
            self.head_since = self._loop.time()
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self.head_since = NO_HEAD
            messages = self._messages
            for index in range(
                max(0, len(messages) - (self._request_count - count)), len(messages)
            ):
                message = messages[index][0]
                if isinstance(message, RawRequestMessage) and message.version not in _HTTP_1:
                    messages[index] = (_version_answer(message), messages[index][1])
            if messages:
                self._last_payload = messages[-1][1]

    def close_for_idle(self) -> None:
        """Not called: aiohttp closes idle connections itself (idle_since stays unset)."""

    def close_for_head_timeout(self) -> None:
        """Close at once, answering nothing (a request never arrived)."""
        limits_log.info("closing a connection from %s: its head took too long", self.peername)
        self.force_close()
        if self.transport is not None:
            self.transport.close()


def _version_answer(message: RawRequestMessage) -> _ErrInfo:
    """A head of another HTTP version than 1.0 and 1.1 (aiohttp's parser lets "HTTP/2.0"
    through, and would answer "HTTP/2.0 200" in HTTP/1 framing): 505 (RFC 9110
    15.6.6), answered as HTTP/1.0."""
    return _ErrInfo(
        status=505,
        exc=HttpProcessingError(code=505, message=f"HTTP version {message.version} in a head"),
        message="HTTP version not supported",
    )


class LimitedServer(web.Server):
    """aiohttp's low-level server whose connections obey `ConnectionLimits`."""

    def __init__(
        self,
        handler: Callable[[BaseRequest], Any],
        limits: ConnectionLimits,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        """A protocol for one new connection."""
        return _LimitedHandler(self, self.limits, loop=self._loop, **self._kwargs)
