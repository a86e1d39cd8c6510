"""A lean HTTP/1.1 client for the common miss: GET and HEAD without a body to a
plain-http peer, over kept-alive connections of a small pool per peer.

aiohttp's client costs a miss 10-20% of the event loop (its request object, its URL,
its connector, its response parser and stream reader) for what is, on the miss path,
one short request head written and one response read. Here a connection is an
`asyncio.Protocol`; `httptools` (llhttp, as our front uses) parses the answer into a
`LeanResponse`, which is the `UpstreamResponse` the engine already knows. Requests
with a body and https peers still go through aiohttp (`edge.upstream_wire`);
`edge.upstream_session.send` picks one. Everything the peer sends is bounded: the
head (line, field and count limits as aiohttp's), the framing (llhttp refuses what
RFC 9112 does), the bytes buffered before the reader takes them, and each wait (the
read timeout). A connection goes back to its pool only after a response that ended
cleanly, with nothing after it (RFC 9112 6.3: bytes past a body are not part of it,
and read as the next response they would answer a request never sent).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from edge.cache.fields import upstream_header_pairs
from edge.cache.hints import forwardable_informational
from edge.informational import MAX_FIELDS, MAX_INFORMATIONAL, Relay, current_relay
from edge.upstream_wire import UpstreamError, UpstreamResponse, _ConnectFailure, _Request

__all__ = ["LEAN_METHODS", "LeanResponse", "UpstreamClient"]

log = logging.getLogger("edgeshield.upstream")

#: aiohttp's client limits, kept: a status line or field line, and fields per head
MAX_LINE = 8190
MAX_HEADERS = 128
#: 1xx heads read before the final one (each relayed or dropped; a flood is bounded)
MAX_INTERIM = 4096
#: body bytes buffered ahead of the reader before the socket stops being read
BUFFER_HIGH = 512 * 1024
#: idle connections kept per peer, and how long one is trusted idle (aiohttp's 30 s)
MAX_IDLE = 64
IDLE_SECONDS = 30.0
LEAN_METHODS = frozenset({"GET", "HEAD"})
#: what may not appear in a field line (aiohttp's client refuses the same)
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _Unasked(Exception):
    """Bytes came after the final response: the connection is never reused."""


class _Refused(Exception):
    """The head broke a bound of ours (the message is the client's reason)."""


class _HeadEnd(Exception):
    """A HEAD's answer ends with its head: parsing stops there (the connection then
    closes, as whatever follows cannot be framed)."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection to a peer; bytes go to the response in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: LeanResponse | None = None
        self.lost = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            log.warning("upstream sent bytes nobody asked for: connection closed")
            self.close()
            return
        self.response._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.response is not None:
            self.response._lost()

    @property
    def open(self) -> bool:
        """Whether the socket is still there to send on."""
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        """Close the socket now (nothing is ever sent on it again)."""
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class LeanResponse(UpstreamResponse):
    """The answer to one request on a `_Connection`: the parser's callbacks fill it."""

    _headers: CIMultiDictProxy[str] | None

    def __init__(
        self,
        client: UpstreamClient,
        pool: list[_Connection],
        connection: _Connection,
        peer: str,
        head_only: bool,
    ) -> None:
        super().__init__(peer, 0, _NO_FIELDS, _nothing)
        self._client = client
        self._pool = pool
        self._connection = connection
        self._head_only = head_only
        #: the parser holds this response's bound callbacks: a reference cycle, broken
        #: at release (`_unlink`); left to the cyclic collector, each answer was about
        #: 40 objects of garbage (parser, fields, the pool's closures, the client's sink)
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._relay: Relay | None = current_relay()
        self._relayed = 0
        self._interim = 0
        #: the head's field lines as the parser gives them, decoded once it ends
        self._raw: list[tuple[bytes, bytes]] = []
        self._line_bytes = 0
        self._pairs: tuple[tuple[str, str], ...] = ()
        self._keep_alive = False
        self.started = False  # any byte of an answer arrived
        self.head_done = False
        self.complete = False
        self._error: UpstreamError | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._stopped: Exception | None = None

    # -- the parser's callbacks (httptools) ------------------------------------------
    def on_message_begin(self) -> None:
        """A message starts: after the final one, nothing may."""
        if self.complete:
            raise self._halt(_Unasked())
        self._raw = []
        self._line_bytes = 0

    def on_status(self, status: bytes) -> None:
        """The status line's reason."""
        if len(status) > MAX_LINE:
            raise self._halt(_Refused("upstream status line too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        """One field line of the head (httptools joins its pieces)."""
        raw = self._raw
        if len(name) + len(value) > MAX_LINE:
            raise self._halt(_Refused("upstream header field too long"))
        if len(raw) >= MAX_HEADERS:
            raise self._halt(_Refused("upstream sent too many header fields"))
        # kept as bytes: decoded in one pass at the head's end (`_decoded`)
        raw.append((name, value))

    def on_headers_complete(self) -> None:
        """A head ended: a 1xx is relayed, a final one is the answer's."""
        parser = self._parser
        assert parser is not None  # a callback of it
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise self._halt(_Refused("upstream switched protocols unasked"))
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise self._halt(_Refused("upstream sent too many informational responses"))
            if (
                self._relay is not None
                and forwardable_informational(status)
                and self._relayed < MAX_INFORMATIONAL
            ):
                # RFC 9110 15.2: a proxy forwards 1xx responses (edge.informational)
                self._relayed += 1
                pairs = upstream_header_pairs(_decoded(self._raw))[:MAX_FIELDS]
                self._relay(status, CIMultiDict(pairs))
            return
        self.status = status
        self._pairs = _decoded(self._raw)
        self._raw = []
        self._headers = None  # made when first asked for (`headers`)
        self._keep_alive = parser.should_keep_alive()
        self.head_done = True
        self._wake()
        if self._head_only:
            # RFC 9110 9.3.2: an answer to HEAD has no body, whatever its fields say
            self.complete = True
            raise self._halt(_HeadEnd())

    def on_body(self, body: bytes) -> None:
        """Body bytes (de-chunked): buffered for the reader, bounded."""
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > BUFFER_HIGH and not self._paused:
            self._paused = True
            if self._connection.transport is not None:
                self._connection.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        """A message ended: a 1xx's lets the next head start; the final one's is
        the body's end."""
        if self.head_done:
            self.complete = True
            self._wake()

    # -- the connection's side ---------------------------------------------------------
    def _halt(self, reason: Exception) -> Exception:
        """Stop the parser with `reason` (httptools raises its own error for it)."""
        self._stopped = reason
        return reason

    def _feed(self, data: bytes) -> None:
        self.started = True
        parser = self._parser
        if parser is None:  # released: the connection no longer sends here
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            reason, self._stopped = self._stopped, None
            if isinstance(reason, _Refused):
                self._broken(str(reason))
            elif self.complete:
                if not isinstance(reason, _HeadEnd):
                    # bytes after the answer, a message or not: never read as the next
                    log.warning("upstream %s sent bytes after its answer: closed", self.peer)
                self._connection.close()
            else:
                self._broken("upstream broke the framing", repr(exc))

    def _lost(self) -> None:
        if self.complete or self._error is not None:
            return
        if self.head_done and self.close_delimited:
            # RFC 9112 6.3 item 8: the body ends where the connection closes
            self.complete = True
            self._wake()
            return
        reason = "upstream broke off the body" if self.head_done else "upstream request failed"
        self._error = UpstreamError(502, reason, detail=f"{self.peer}: connection closed")
        self._wake()

    def _broken(self, reason: str, detail: str = "") -> None:
        self._connection.close()
        if self._error is None and not self.complete:
            self._error = UpstreamError(502, reason, detail=f"{self.peer}: {detail or reason}")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until the parser or the connection says more; TimeoutError past the read
        timeout (a fresh timer for each wait: it bounds silence, not the whole)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._client.read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def head(self) -> None:
        """Wait for the final head (UpstreamError or _ConnectFailure if none comes)."""
        while not self.head_done:
            if self._error is not None:
                if not self.started:
                    raise _ConnectFailure(f"{self.peer} closed the connection")
                raise self._error
            try:
                await self._wait()
            except TimeoutError:
                self._connection.close()
                raise UpstreamError(
                    504, "upstream did not answer in time", detail=self.peer, unreachable=True
                ) from None

    # -- UpstreamResponse --------------------------------------------------------------
    @property  # type: ignore[override]
    def headers(self) -> CIMultiDictProxy[str]:
        """The answer's fields as a map, made from `header_pairs` when first asked
        for: a fill reads the pairs only (edge.filling), and a map per answer that
        nobody reads cost a miss about a microsecond."""
        headers = self._headers
        if headers is None:
            headers = self._headers = (
                CIMultiDictProxy(CIMultiDict(self._pairs)) if self._pairs else _NO_FIELDS
            )
        return headers

    @headers.setter
    def headers(self, value: CIMultiDictProxy[str]) -> None:
        self._headers = value

    @property
    def header_pairs(self) -> tuple[tuple[str, str], ...]:
        """Headers as received, decoded, in order."""
        return self._pairs

    async def iter_chunks(self, size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamError if the upstream stops short."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                if len(chunk) > size:
                    self._chunks.appendleft(chunk[size:])
                    chunk = chunk[:size]
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= BUFFER_HIGH // 2:
                    self._paused = False
                    if self._connection.transport is not None:
                        self._connection.transport.resume_reading()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self.complete:
                return
            else:
                try:
                    await self._wait()
                except TimeoutError:
                    self._broken("upstream broke off the body", "read timeout")

    def take_whole(self) -> bytes | None:
        """The whole body, when the parser has seen its end and nothing broke."""
        if not self.complete or self._error is not None:
            return None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if self._connection.transport is not None:
                self._connection.transport.resume_reading()
        return body

    def _unlink(self) -> None:
        """Break the response's reference cycles (parser, connection), so its objects
        go by reference counting, not by the cyclic collector."""
        self._parser = None
        self._connection.response = None

    def _release(self) -> None:
        connection = self._connection
        self._unlink()
        if (
            self.complete
            and self._keep_alive
            and self._error is None
            and not self._chunks
            and connection.open
            and len(self._pool) < MAX_IDLE
        ):
            connection.idle_since = time.monotonic()
            self._pool.append(connection)
        else:
            connection.close()

    def _close(self) -> None:
        self._unlink()
        self._connection.close()
        if self._error is None and not self.complete:
            self._error = UpstreamError(502, "upstream answer closed", detail=self.peer)
        self._wake()


#: the fields of an answer whose head has not arrived (read-only, so shared)
_NO_FIELDS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _decoded(raw: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """A head's field lines as text (latin-1, as aiohttp's client decodes them),
    trailing whitespace off each value."""
    return tuple(
        [(name.decode("latin-1"), value.decode("latin-1").rstrip(" \t")) for name, value in raw]
    )


def _nothing() -> None:
    """What an answer not yet handed out calls when done: nothing."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamClient:
    """Kept-alive connections to plain-http peers, a pool per peer (a session's)."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: idle connections by base URL, the most recently used last
        self._pools: dict[str, list[_Connection]] = {}
        #: base URL -> (host, port, path prefix, Host field), or None: not for us
        self._peers: dict[str, tuple[str, int, str, str] | None] = {}
        self.closed = False

    def peer(self, base_url: str) -> tuple[str, int, str, str] | None:
        """Where a base URL points, if this client can reach it (plain http)."""
        try:
            return self._peers[base_url]
        except KeyError:
            pass
        parts = urlsplit(base_url)
        found = None
        if parts.scheme == "http" and parts.hostname and not parts.query:
            found = (parts.hostname, parts.port or 80, parts.path.rstrip("/"), parts.netloc)
        self._peers[base_url] = found
        return found

    async def request(
        self,
        base_url: str,
        address: tuple[str, int, str, str],
        request: _Request,
        peer: str,
        on_done: Callable[[], None],
    ) -> LeanResponse:
        """Send a bodiless request and read the answer's head.

        Raises `_ConnectFailure` when the request cannot have reached the peer (no
        connection, or one closed before any answer) and `UpstreamError` after that.
        A kept-alive connection the peer closed while idle is replaced once, quietly.
        """
        host, port, prefix, netloc = address
        try:
            wire = _request_head(request, prefix, netloc)
            pool = self._pools.setdefault(base_url, [])
            while True:
                reused = False
                connection = None
                while pool:
                    candidate = pool.pop()
                    if candidate.open and time.monotonic() - candidate.idle_since < IDLE_SECONDS:
                        connection, reused = candidate, True
                        break
                    candidate.close()
                if connection is None:
                    connection = await self._connect(host, port, peer)
                response = LeanResponse(self, pool, connection, peer, request.method == "HEAD")
                connection.response = response
                assert connection.transport is not None
                connection.transport.write(wire)
                try:
                    await response.head()
                except _ConnectFailure:
                    connection.close()
                    if reused:
                        continue
                    raise
                break
        except BaseException:
            on_done()
            raise
        response._on_done = on_done
        return response

    async def _connect(self, host: str, port: int, peer: str) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _transport, connection = await loop.create_connection(_Connection, host, port)
        except TimeoutError:
            raise UpstreamError(
                504, "upstream did not answer in time", detail=peer, unreachable=True
            ) from None
        except OSError as exc:
            raise _ConnectFailure(f"cannot connect to {peer}: {exc}") from None
        return connection

    def close(self) -> None:
        """Close every idle connection; connections in use close with their answer."""
        self.closed = True
        for pool in self._pools.values():
            for connection in pool:
                connection.close()
            pool.clear()


def _request_head(request: _Request, prefix: str, netloc: str) -> bytes:
    """The request line and fields as bytes (RFC 9112 3). A control character in a
    field (RFC 9110 5.5) is refused: a line break would start a field, or a request,
    of the sender's choosing. Values go out as they came in (the front decodes them
    as UTF-8 with surrogate escapes, which encoding undoes)."""
    lines = [f"{request.method} {prefix}{request.target} HTTP/1.1"]
    headers = request.headers
    if "host" not in headers:
        lines.append(f"Host: {netloc}")
    if "accept" not in headers:
        lines.append("Accept: */*")  # as aiohttp's client sent it
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if _FORBIDDEN.search("\t".join(lines)) is not None:
        raise UpstreamError(502, "upstream request failed", detail="a control character in a field")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
