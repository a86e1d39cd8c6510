"""Our own HTTP/1.1 front: an `asyncio.Protocol` per connection on `httptools`' parser.

aiohttp's server objects cost most of a cache hit (measured: the same parser under a
plain protocol answers twice as fast), so the client side is this module: bytes in,
`RequestHead`/`BodyStream` to the engine, a `ResponseSink` that frames the answer.
This module is the connection (parsing, the queue, flow control); the body stream is
`request_body.py`, the sink `h1_sink.py`, the hit lane `h1_hits.py`, and the wire's
vocabulary (limits, status lines, Date) `h1_wire.py`.

- Requests on a connection are answered in the order they arrived (pipelining,
  RFC 9112 9.3.2): parsed heads queue up and one task per busy connection answers
  them; reading pauses while too many wait.
- A plain GET the hot lane can answer is answered inside the parser's callback, from
  a head serialised once per stored entry and coding, with only Age, Cache-Status
  and (when the origin sent none) Date written per response.
- Request bodies (Content-Length or chunked) stream to the engine as they arrive;
  reading pauses above `BODY_HIGH_WATER` buffered bytes, so an upload of any size
  holds a bounded amount of memory. `Expect: 100-continue` is answered when the
  engine first reads the body (RFC 9110 10.1.1).
- Responses stream with backpressure: the transport's write buffer has a high-water
  mark, and a writer waits while the transport is paused.
- Limits (`FrontLimits`): head size and field count, the head deadline and idle
  keep-alive (swept by `edge.limits.ConnectionLimits`), the connection cap, a
  deadline on each wait for upload bytes and on each wait for a slow reader. Framing
  errors get a short 400 and a closed connection, never the offending bytes echoed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict

from edge.accesslog import AccessLog
from edge.front.h1_exchange import Exchange, answer
from edge.front.h1_hits import HitWriter
from edge.front.h1_sink import FrontSink
from edge.front.h1_wire import (
    BodyTimeout,
    DateClock,
    FrameError,
    FrontLimits,
    parser_reason,
    status_line,
)
from edge.front.https_policy import HttpsPolicy
from edge.front.request_body import BODY_HIGH_WATER, RequestBody, announced_body
from edge.front.types import NoBody, RequestHead
from edge.limits import NO_HEAD, REFUSED_RESPONSE, ConnectionLimits
from edge.metrics import NodeMetrics

if TYPE_CHECKING:
    from edge.engine import Engine

__all__ = [
    "BODY_HIGH_WATER",
    "BodyTimeout",
    "FrameError",
    "Front",
    "FrontLimits",
    "FrontProtocol",
    "FrontSink",
    "RequestBody",
]

log = logging.getLogger("edgeshield.node")
limits_log = logging.getLogger("edgeshield.limits")

#: Bytes queued on a transport before writers wait (uvicorn and aiohttp use 64 KiB;
#: more lets a 1 MiB hit leave in fewer wakeups).
WRITE_HIGH_WATER = 512 * 1024
#: Parsed requests waiting for their answer before reading pauses (pipelining).
MAX_QUEUED = 16
#: A request line or header line longer than this is refused (aiohttp's and
#: nginx's order of magnitude: 8 KiB per line).
MAX_LINE = 8190

_HTTP_1 = ("1.1", "1.0")


class Front:
    """One worker's front: what every connection shares (engine, limits, log, caches).

    `Front(...)` is the protocol factory to give `loop.create_server`."""

    def __init__(
        self,
        engine: Engine,
        limits: ConnectionLimits,
        metrics: NodeMetrics,
        access_log: AccessLog | None = None,
        front_limits: FrontLimits | None = None,
        scheme: str = "http",
        https: HttpsPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.metrics = metrics
        self.access_log = access_log
        self.front_limits = front_limits or FrontLimits()
        self.scheme = scheme
        #: the access log's protocol field
        self.proto = f"{scheme}/1.1"
        #: the services' https_redirect and HSTS, when any service has them: answers
        #: then go through the engine path, which applies them
        self.https = https if https is not None and https.active else None
        self.clock = DateClock()
        self.hits = HitWriter(self)

    def __call__(self) -> FrontProtocol:
        """A protocol for one new connection."""
        return FrontProtocol(self)


class FrontProtocol(asyncio.Protocol):
    """One client connection: parse, queue, answer in order, keep alive or close."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: str | None = None
        #: loop time of the first byte of a head being read (NO_HEAD: none is)
        self.head_since = NO_HEAD
        #: loop time since which the connection has been idle (NO_HEAD: it is not)
        self.idle_since = NO_HEAD
        self._admitted = False
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: RequestBody | None = None
        self._queue: deque[Exchange] = deque()
        self._task: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused_for_body = False
        self._paused_for_queue = False
        #: no more requests are read (close after the queued ones are answered)
        self._last = False
        self._lost = False
        self._refusal: FrameError | None = None

    @property
    def lost(self) -> bool:
        """The client connection is gone."""
        return self._lost

    # -- the transport's side ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection in, or answer 503 and close when over the cap."""
        # uvloop's transports are not subclasses of asyncio.Transport
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if not self.front.limits.admit(self):
            transport.write(REFUSED_RESPONSE)
            transport.close()
            self._lost = True
            return
        self._admitted = True
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self.idle_since = self.loop.time()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Count the connection out; whatever waits on it learns it is gone."""
        self._lost = True
        if self._admitted:
            self._admitted = False
            self.front.limits.closed(self)
        gone = ConnectionResetError("the client connection was lost")
        if self._body is not None:
            self._body.fail(gone)
        for exchange in self._queue:
            if isinstance(exchange.body, RequestBody):
                exchange.body.fail(gone)
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_exception(gone)
            # retrieved or not, the loss is reported through `write` and `drain`
            writable.exception()
        self._writable = None

    def pause_writing(self) -> None:
        """The write buffer passed its high-water mark: writers wait."""
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        """The write buffer drained: writers go on."""
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a framing error queues a short 400 after what is queued."""
        if self._last or self._lost:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # no protocol switch is offered (RFC 9110 7.8): what follows the head of an
            # Upgrade or CONNECT request is not HTTP/1.1 we could read
            self._stop_reading()
        except httptools.HttpParserError as error:
            if self._last:
                return  # bytes after a request that closes the connection
            refusal = self._refusal or FrameError(400, parser_reason(error))
            self._refuse(refusal)

    # -- the parser's callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        """A request starts: its head's deadline runs from now."""
        self._url = b""
        self._fields = []
        self._head_bytes = 0
        self.idle_since = NO_HEAD
        if self.head_since == NO_HEAD:
            self.head_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        """Part of the request target."""
        self._url += url
        self._head_bytes += len(url)
        if len(self._url) > MAX_LINE or self._head_bytes > self.front.front_limits.max_head_size:
            self._refusal = FrameError(400, "request target too long")
            raise self._refusal

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field."""
        self._head_bytes += len(name) + len(value) + 4
        self._fields.append((name, value))
        limits = self.front.front_limits
        if len(name) + len(value) > MAX_LINE or self._head_bytes > limits.max_head_size:
            self._refusal = FrameError(400, "request head too large")
            raise self._refusal
        if len(self._fields) > limits.max_fields:
            self._refusal = FrameError(400, "too many header fields")
            raise self._refusal

    def on_headers_complete(self) -> None:
        """The head is whole: answer it from the hot lane, or queue it for the engine."""
        self.head_since = NO_HEAD
        parser = self.parser
        version = parser.get_http_version()
        if version not in _HTTP_1:
            # RFC 9110 15.6.6; answered in HTTP/1.0, the version every client reads
            self._refusal = FrameError(505, "HTTP version not supported")
            raise self._refusal
        headers: CIMultiDict[str] = CIMultiDict(
            [
                (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
                for name, value in self._fields
            ]
        )
        method = parser.get_method().decode("ascii")
        head = RequestHead(
            method,
            self._url.decode("utf-8", "surrogateescape"),
            headers,
            self.peer,
            self.front.scheme,
            (1, 1) if version == "1.1" else (1, 0),
        )
        keep_alive = parser.should_keep_alive()
        try:
            body = announced_body(self, headers)
        except FrameError as refusal:
            self._refusal = refusal
            raise
        if body is None:
            if (
                method == "GET"
                and self.front.https is None
                and not self._queue
                # traffic rules are the engine's to carry out, hits included: only a
                # request no rule acts on is answered here
                and (not self.front.engine.traffic.active or self.front.engine.traffic.passes(head))
                and self._writable is None
                and self._hot(head, keep_alive)
            ):
                if not keep_alive:
                    self._stop_reading()
                    self._close()
                return
            self._queue_exchange(Exchange(head, NoBody(), keep_alive))
        else:
            self._body = body
            self._queue_exchange(Exchange(head, body, keep_alive))

    def on_body(self, data: bytes) -> None:
        """Bytes of the current request's body."""
        if self._body is not None:
            self._body.feed(data)

    def on_message_complete(self) -> None:
        """The request (and its body) is complete."""
        if self._body is not None:
            self._body.finish()
            self._body = None
        if not self.parser.should_keep_alive():
            self._stop_reading()

    # -- the hot lane ------------------------------------------------------------------------
    def _hot(self, head: RequestHead, keep_alive: bool) -> bool:
        """Answer a fresh in-memory hit at once (edge/front/h1_hits.py); False when the
        hot lane cannot answer it."""
        transport = self.transport
        assert transport is not None
        if not self.front.hits.answer(transport, head, keep_alive, self.peer):
            return False
        self.idle_since = self.loop.time()
        return True

    # -- the queue ---------------------------------------------------------------------------
    def _queue_exchange(self, exchange: Exchange) -> None:
        self._queue.append(exchange)
        if len(self._queue) >= MAX_QUEUED and not self._paused_for_queue:
            self._paused_for_queue = True
            self._pause_reading()
        if self._task is None:
            self._task = self.loop.create_task(self._answer_queue())

    def _refuse(self, refusal: FrameError) -> None:
        """Queue a short answer to a request we will not read, then close."""
        self._stop_reading()
        if self._body is not None:
            self._body.fail(refusal)
            self._body = None
        self._queue_exchange(Exchange(None, NoBody(), False, refusal))

    def _stop_reading(self) -> None:
        self._last = True

    async def _answer_queue(self) -> None:
        """Answer queued requests in order, then go idle (or close)."""
        queue = self._queue
        try:
            while queue and not self._lost:
                exchange = queue[0]
                keep = await answer(self, exchange)
                queue.popleft()
                if self._paused_for_queue and len(queue) < MAX_QUEUED // 2:
                    self._paused_for_queue = False
                    self._resume_reading()
                if not keep:
                    self._close()
                    return
        finally:
            self._task = None
        if self._last and not self._lost:
            # nothing more will be read (a refusal, an upgrade, a close)
            self._close()
            return
        if self.head_since == NO_HEAD and self._body is None:
            self.idle_since = self.loop.time()

    def write_refusal(self, refusal: FrameError) -> None:
        """The short answer to a request this front refuses, then a close."""
        self.write_short(refusal.status, refusal.reason)

    def write_short(self, status: int, reason: str) -> None:
        """A short answer and a close: status and reason, never the client's bytes."""
        body = f"{status} {reason}\n".encode()
        version = "1.0" if status == 505 else "1.1"
        if self._lost or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            status_line(version, status)
            + b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body) + body
        )

    # -- writing and flow control -----------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Write to the client; raises once the connection is gone."""
        if self._lost or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client connection was lost")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is above its high-water mark."""
        writable = self._writable
        if writable is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(writable), self.front.front_limits.send_timeout)
        except TimeoutError:
            limits_log.info("closing a connection from %s: it stopped reading", self.peer)
            self.cut()
            raise ConnectionResetError("the client stopped reading") from None

    def send_continue(self) -> None:
        """RFC 9110 10.1.1: the client waits for 100 before sending the body."""
        if not self._lost and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def pause_for_body(self) -> None:
        """Too much of a request body is buffered: stop reading until the engine reads."""
        if not self._paused_for_body:
            self._paused_for_body = True
            self._pause_reading()

    def resume_for_body(self) -> None:
        """The engine has read the body down: read again."""
        if self._paused_for_body:
            self._paused_for_body = False
            self._resume_reading()

    def _pause_reading(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self.transport is not None
            and not self._lost
            and not self._paused_for_body
            and not self._paused_for_queue
        ):
            self.transport.resume_reading()

    def cut(self) -> None:
        """Close at once, whatever is buffered (an answer cut short)."""
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        """Close after what is written has left."""
        if self.transport is not None:
            self.transport.close()

    # -- what the limits' sweep calls ------------------------------------------------------
    def close_for_head_timeout(self) -> None:
        """Close at once, answering nothing: a request head took too long."""
        limits_log.info("closing a connection from %s: its head took too long", self.peer)
        self._admitted = False
        self.cut()

    def close_for_idle(self) -> None:
        """Close an idle keep-alive connection."""
        self._admitted = False
        self._close()
