"""Our own HTTP/1.1 front: an `asyncio.Protocol` per connection on `httptools`' parser.

aiohttp's server objects cost most of a cache hit (measured: the same parser under a
plain protocol answers twice as fast), so the client side is this module: bytes in,
`RequestHead`/`BodyStream` to the engine, a `ResponseSink` that frames the answer.

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
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict

from edge.accesslog import AccessLog
from edge.front.https_policy import HTTPS_REDIRECT, HttpsPolicy
from edge.front.types import NoBody, RequestHead
from edge.limits import NO_HEAD, REFUSED_RESPONSE, ConnectionLimits
from edge.metrics import NodeMetrics
from edge.outcome import refused
from edge.upstream import GENERATED_ERROR_HEADER

if TYPE_CHECKING:
    from edge.engine import Engine
    from edge.hotlane import PreparedHit

log = logging.getLogger("edgeshield.node")
limits_log = logging.getLogger("edgeshield.limits")

#: Bytes queued on a transport before writers wait (uvicorn and aiohttp use 64 KiB;
#: more lets a 1 MiB hit leave in fewer wakeups).
WRITE_HIGH_WATER = 512 * 1024
#: Request-body bytes buffered before reading from the client pauses.
BODY_HIGH_WATER = 256 * 1024
#: Parsed requests waiting for their answer before reading pauses (pipelining).
MAX_QUEUED = 16
#: A request line or header line longer than this is refused (aiohttp's and
#: nginx's order of magnitude: 8 KiB per line).
MAX_LINE = 8190
#: Bodies below this are joined to their head and written in one call.
JOIN_BELOW = 16 * 1024

_HTTP_1 = ("1.1", "1.0")
_NO_BODY_STATUS = frozenset((204, 304))
_FRAMING = ("Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive")


@dataclass(frozen=True, slots=True)
class FrontLimits:
    """The bounds this front puts on each client (all from the node's fleet.toml table)."""

    #: bytes of a request head (request line and fields), at most
    max_head_size: int = 32 * 1024
    #: header fields of a request, at most
    max_fields: int = 100
    #: seconds of waiting for the next bytes of a request body (uploads)
    body_timeout: float = 60.0
    #: seconds of waiting for a client that does not read its answer
    send_timeout: float = 60.0


class FrameError(Exception):
    """A request this front refuses to parse further (status and a short reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BodyTimeout(ConnectionError):
    """An upload stopped sending for longer than `body_timeout`."""


_STATUS_LINES: dict[tuple[str, int], bytes] = {}


def _status_line(version: str, status: int) -> bytes:
    line = _STATUS_LINES.get((version, status))
    if line is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        line = f"HTTP/{version} {status} {reason}\r\n".encode()
        _STATUS_LINES[(version, status)] = line
    return line


class _Clock:
    """The Date field's value, formatted once per second (RFC 9110 6.6.1)."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


def _header_block(headers: CIMultiDict[str], skip: tuple[str, ...] = _FRAMING) -> list[str]:
    """`headers` as `Name: value\\r\\n` lines, without the framing fields (ours)."""
    lines = []
    for name, value in headers.items():
        if name in skip or name.title() in skip:
            continue
        lines.append(f"{name}: {value}\r\n")
    return lines


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
        self.clock = _Clock()
        #: id(prepared hit) → (the prepared hit, its serialised head less the fields
        #: written per response); bounded like the hot lane's own tables
        self._wire: dict[int, tuple[PreparedHit, bytes, bool]] = {}

    def __call__(self) -> FrontProtocol:
        """A protocol for one new connection."""
        return FrontProtocol(self)

    def wire(self, prepared: PreparedHit) -> tuple[bytes, bool]:
        """A prepared hit's head as bytes (status line to Content-Length), and whether
        it carries its own Date."""
        found = self._wire.get(id(prepared))
        if found is not None and found[0] is prepared:
            return found[1], found[2]
        lines = _header_block(prepared.headers)
        lines.append(f"Content-Length: {len(prepared.body)}\r\n")
        head = _status_line("1.1", prepared.status) + "".join(lines).encode(
            "utf-8", "surrogateescape"
        )
        has_date = "Date" in prepared.headers
        if len(self._wire) >= 50_000:
            self._wire.clear()
        self._wire[id(prepared)] = (prepared, head, has_date)
        return head, has_date


class _Exchange:
    """One parsed request waiting for (or being given) its answer."""

    __slots__ = ("body", "head", "keep_alive", "refusal")

    def __init__(
        self,
        head: RequestHead | None,
        body: RequestBody | NoBody,
        keep_alive: bool,
        refusal: FrameError | None = None,
    ) -> None:
        self.head = head
        self.body = body
        self.keep_alive = keep_alive
        self.refusal = refusal


class RequestBody:
    """A request body as it arrives on the connection: a `BodyStream` with bounded
    buffering (reading from the client pauses above `BODY_HIGH_WATER`)."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_connection",
        "_continue",
        "_waiter",
        "complete",
        "error",
        "length",
        "started",
    )

    exists = True

    def __init__(
        self, connection: FrontProtocol, length: int | None, expect_continue: bool
    ) -> None:
        self._connection = connection
        self.length = length
        self._continue = expect_continue
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.started = False
        self.error: BaseException | None = None

    def feed(self, data: bytes) -> None:
        """Bytes of the body from the parser."""
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER:
            self._connection.pause_for_body()
        self._wake()

    def finish(self) -> None:
        """The body is complete."""
        self.complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The body will never be complete (framing error, connection lost, timeout)."""
        if not self.complete and self.error is None:
            self.error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; raises when it cannot be read whole."""
        self.started = True
        connection = self._connection
        if self._continue:
            self._continue = False
            connection.send_continue()
        timeout = connection.front.front_limits.body_timeout
        loop = connection.loop
        while True:
            if self._buffer:
                chunk = self._buffer.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= BODY_HIGH_WATER // 4:
                    connection.resume_for_body()
                yield chunk
                continue
            if self.error is not None:
                raise self.error
            if self.complete:
                return
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                self.fail(BodyTimeout("the request body stopped arriving"))
            finally:
                self._waiter = None


class FrontSink:
    """The `ResponseSink` of one exchange: frames the engine's answer on the wire."""

    __slots__ = (
        "_body",
        "_chunked",
        "_connection",
        "_head_only",
        "_version",
        "close",
        "hsts",
        "length",
        "status",
    )

    def __init__(
        self,
        connection: FrontProtocol,
        head: RequestHead,
        keep_alive: bool,
        body: RequestBody | NoBody | None = None,
    ) -> None:
        self._connection = connection
        self._body = body
        self._version = "1.1" if head.version == (1, 1) else "1.0"
        self._head_only = head.method == "HEAD"
        self._chunked = False
        #: the status sent, 0 before any
        self.status = 0
        #: body bytes announced (Content-Length), None when not known
        self.length: int | None = None
        #: close the connection after this answer
        self.close = not keep_alive
        #: Strict-Transport-Security for this answer (edge/front/https_policy.py)
        self.hsts: str | None = None

    def _head(self, status: int, headers: CIMultiDict[str], framing: str) -> bytes:
        lines = _header_block(headers)
        if "Date" not in headers:
            lines.append(f"Date: {self._connection.front.clock.date().decode()}\r\n")
        if self.hsts is not None:
            lines.append(f"Strict-Transport-Security: {self.hsts}\r\n")
        lines.append(framing)
        if self.close:
            lines.append("Connection: close\r\n")
        elif self._version == "1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return _status_line(self._version, status) + "".join(lines).encode(
            "utf-8", "surrogateescape"
        )

    def send(
        self,
        status: int,
        headers: CIMultiDict[str],
        body: bytes | None = None,
        *,
        close: bool = False,
    ) -> None:
        """A whole answer held in memory."""
        if self._refused_body():
            return
        if close:
            self.close = True
        data = body or b""
        self.status = status
        self.length = len(data)
        framing = "" if status in _NO_BODY_STATUS else f"Content-Length: {len(data)}\r\n"
        head = self._head(status, headers, framing)
        if self._head_only or status in _NO_BODY_STATUS or not data:
            self._connection.write(head)
        elif len(data) < JOIN_BELOW:
            self._connection.write(head + data)
        else:
            self._connection.write(head)
            self._connection.write(data)

    async def start(self, status: int, headers: CIMultiDict[str]) -> None:
        """Send the head of a streamed answer: Content-Length framing when the engine
        gave a length, else chunked (HTTP/1.1) or close-delimited (HTTP/1.0)."""
        if self._refused_body():
            return
        self.status = status
        length = headers.get("Content-Length")
        if status in _NO_BODY_STATUS or (status < 200):
            framing = ""
        elif length is not None:
            framing = f"Content-Length: {length}\r\n"
            self.length = int(length)
        elif self._head_only:
            framing = ""
        elif self._version == "1.1":
            framing = "Transfer-Encoding: chunked\r\n"
            self._chunked = True
        else:
            # RFC 9112 6.3: an HTTP/1.0 client reads to the close
            self.close = True
            framing = ""
        self._connection.write(self._head(status, headers, framing))
        await self._connection.drain()

    def informational(self, status: int, headers: CIMultiDict[str]) -> None:
        """A 1xx head (103 Early Hints) ahead of the final one; none to an HTTP/1.0
        client (RFC 9110 15.2) or once the final head has gone."""
        if self.status or self._version != "1.1":
            return
        lines = _header_block(headers)
        lines.append("\r\n")
        self._connection.write(
            _status_line("1.1", status) + "".join(lines).encode("utf-8", "surrogateescape")
        )

    def _refused_body(self) -> bool:
        """The request's body broke its own framing (a bad chunk) before any answer
        left: the client gets the short 400 of that, whatever the engine made of the
        cut body (an upstream error, say), and the connection closes."""
        body = self._body
        if not isinstance(body, RequestBody) or not isinstance(body.error, FrameError):
            return False
        if self.status == 0:
            self.status = body.error.status
            self.close = True
            self._head_only = True  # nothing of the engine's answer follows
            self._connection._write_refusal(body.error)
        return True

    async def write(self, chunk: bytes) -> None:
        """Send body bytes of a started answer; waits while the client is slow."""
        if not chunk or self._head_only:
            return
        connection = self._connection
        if self._chunked:
            connection.write(b"%x\r\n" % len(chunk))
            connection.write(chunk)
            connection.write(b"\r\n")
        else:
            connection.write(chunk)
        await connection.drain()

    async def end(self) -> None:
        """The started answer is complete."""
        if self._chunked and not self._head_only:
            self._connection.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Cut the connection: the client sees a truncated answer."""
        self.close = True
        self._connection.cut()


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
        self._queue: deque[_Exchange] = deque()
        self._task: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused_for_body = False
        self._paused_for_queue = False
        #: no more requests are read (close after the queued ones are answered)
        self._last = False
        self._lost = False
        self._refusal: FrameError | None = None

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
            refusal = self._refusal or FrameError(400, _parser_reason(error))
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
        body = self._request_body(headers)
        if body is None:
            if (
                method == "GET"
                and self.front.https is None
                and not self._queue
                and (not self.front.engine.traffic.active or self.front.engine.traffic.passes(head))
                and self._writable is None
                and self._hot(head, keep_alive)
            ):
                if not keep_alive:
                    self._stop_reading()
                    self._close()
                return
            self._queue_exchange(_Exchange(head, NoBody(), keep_alive))
        else:
            self._body = body
            self._queue_exchange(_Exchange(head, body, keep_alive))

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
        """Answer a fresh in-memory hit at once from its prepared head; False when the
        hot lane cannot answer it."""
        front = self.front
        started = time.time()
        found = front.engine.hot.prepared_hit(head)
        if found is None:
            return False
        prepared, age, outcome, member = found
        wire, has_date = front.wire(prepared)
        tail = b"Age: %d\r\nCache-Status: %s\r\n" % (int(age), member.encode())
        if not has_date:
            tail += b"Date: " + front.clock.date() + b"\r\n"
        if head.version != (1, 1):
            # the prepared head is HTTP/1.1's
            wire = _status_line("1.0", prepared.status) + wire[wire.index(b"\r\n") + 2 :]
            tail += (
                b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n"
            )
        elif not keep_alive:
            tail += b"Connection: close\r\n\r\n"
        else:
            tail += b"\r\n"
        body = prepared.body
        transport = self.transport
        assert transport is not None
        if len(body) < JOIN_BELOW:
            transport.write(wire + tail + body)
        else:
            transport.writelines((wire, tail, body))
        elapsed = time.time() - started
        front.metrics.hit_seconds.observe(elapsed)
        front.metrics.responded(head.headers.get("Host"), prepared.status)
        log_ = front.access_log
        if log_ is not None:
            log_.record(
                (
                    started,
                    "GET",
                    head.headers.get("Host"),
                    head.target,
                    prepared.status,
                    outcome,
                    len(body),
                    elapsed,
                    self.peer,
                    front.proto,
                )
            )
        self.idle_since = self.loop.time()
        return True

    # -- the queue ---------------------------------------------------------------------------
    def _request_body(self, headers: CIMultiDict[str]) -> RequestBody | None:
        """The body the head announces, or None (no body, or Content-Length: 0)."""
        chunked = "Transfer-Encoding" in headers
        length_field = headers.get("Content-Length")
        if chunked and length_field is not None:
            # RFC 9112 6.1: a message with both is a smuggling attempt, refused
            self._refusal = FrameError(400, "both Content-Length and Transfer-Encoding")
            raise self._refusal
        if chunked and (
            len(headers.getall("Transfer-Encoding")) > 1
            or headers.getone("Transfer-Encoding").strip().lower() != "chunked"
        ):
            # RFC 9112 6.1: chunked must be the last coding, and no other is offered;
            # anything else is framing we cannot agree on with the next hop
            self._refusal = FrameError(400, "unsupported Transfer-Encoding")
            raise self._refusal
        length: int | None = None
        if length_field is not None:
            length = int(length_field)  # llhttp has checked it is one decimal number
            if length == 0:
                return None
        elif not chunked:
            return None
        expect = headers.get("Expect", "").lower() == "100-continue"
        if expect:
            # RFC 9110 10.1.1: this front answers the expectation itself (a 100 when
            # the body is first read), so the next hop is not asked to
            del headers["Expect"]
        return RequestBody(self, length, expect)

    def _queue_exchange(self, exchange: _Exchange) -> None:
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
        self._queue_exchange(_Exchange(None, NoBody(), False, refusal))

    def _stop_reading(self) -> None:
        self._last = True

    async def _answer_queue(self) -> None:
        """Answer queued requests in order, then go idle (or close)."""
        queue = self._queue
        try:
            while queue and not self._lost:
                exchange = queue[0]
                keep = await self._answer(exchange)
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

    async def _answer(self, exchange: _Exchange) -> bool:
        """One request through the engine; whether the connection stays open."""
        head = exchange.head
        if head is None:
            assert exchange.refusal is not None
            self._write_refusal(exchange.refusal)
            return False
        front = self.front
        sink = FrontSink(self, head, exchange.keep_alive, exchange.body)
        started = time.time()
        body = exchange.body
        try:
            redirect = front.https.redirect(head) if front.https is not None else None
            if redirect is not None:
                sink.send(*redirect)
                outcome = HTTPS_REDIRECT
            else:
                if front.https is not None:
                    sink.hsts = front.https.hsts(head)
                outcome = await front.engine.handle(head, body, sink)
            if sink.status == 0:
                raise RuntimeError("the engine returned without answering")
        except (ConnectionError, asyncio.CancelledError) as error:
            if isinstance(error, asyncio.CancelledError):
                raise
            outcome = refused("client-gone")
            if sink.status == 0 and not self._lost:
                failure = body.error if isinstance(body, RequestBody) else None
                if isinstance(failure, BodyTimeout):
                    self._write_short(408, "request body timed out")
                elif isinstance(failure, FrameError):
                    self._write_refusal(failure)
            sink.close = True
        except Exception:
            log.exception("request %s %s failed", head.method, head.target[:200])
            outcome = refused("internal-error")
            if sink.status == 0 and not self._lost:
                # "node": this node itself failed, so an edge may try another shield
                with contextlib.suppress(ConnectionError):
                    sink.send(
                        500,
                        CIMultiDict({"Content-Type": "text/plain", GENERATED_ERROR_HEADER: "node"}),
                        b"500 internal error\n",
                        close=True,
                    )
                sink.close = True
            else:
                sink.abort()
        elapsed = time.time() - started
        front.metrics.responded(head.headers.get("Host"), sink.status)
        if outcome.hit:
            front.metrics.hit_seconds.observe(elapsed)
        else:
            front.metrics.miss_seconds.observe(elapsed)
        if front.access_log is not None:
            front.access_log.record(
                (
                    started,
                    head.method,
                    head.headers.get("Host"),
                    head.target,
                    sink.status,
                    outcome,
                    sink.length,
                    elapsed,
                    self.peer,
                    front.proto,
                )
            )
        if isinstance(body, RequestBody) and not body.complete:
            # the rest of the body is unread, so what follows is not a request head
            return False
        return not sink.close and not self._lost

    def _write_refusal(self, refusal: FrameError) -> None:
        self._write_short(refusal.status, refusal.reason)

    def _write_short(self, status: int, reason: str) -> None:
        """A short answer and a close: status and reason, never the client's bytes."""
        body = f"{status} {reason}\n".encode()
        version = "1.0" if status == 505 else "1.1"
        if self._lost or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            _status_line(version, status)
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


def _parser_reason(error: Exception) -> str:
    """A short reason for a parser error, naming no byte the client sent."""
    if isinstance(error, httptools.HttpParserInvalidMethodError):
        return "invalid request method"
    if isinstance(error, httptools.HttpParserInvalidURLError):
        return "invalid request target"
    return "malformed request"
