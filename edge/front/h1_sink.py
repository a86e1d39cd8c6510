"""The HTTP/1.1 front's `ResponseSink`: frames the engine's answer for one exchange on
the wire (Content-Length, chunked or close-delimited; 1xx heads; HEAD answered bare),
and on plain TCP sends stored bodies with `os.sendfile` (a `FileSink`)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from edge.front.h1_wire import JOIN_BELOW, FrameError, header_block, status_line
from edge.front.request_body import RequestBody
from edge.front.types import NoBody, RequestHead

if TYPE_CHECKING:
    from edge.front.protocol import FrontProtocol

_NO_BODY_STATUS = frozenset((204, 304))

#: Bytes asked of one `os.sendfile` call: a client that reads fast still gives the
#: loop back to the others every few hundred KiB (nginx's sendfile_max_chunk is 2 MiB).
SENDFILE_STEP = 512 * 1024

limits_log = logging.getLogger("edgeshield.limits")


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
        lines = header_block(headers)
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
        return status_line(self._version, status) + "".join(lines).encode(
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
        lines = header_block(headers)
        lines.append("\r\n")
        self._connection.write(
            status_line("1.1", status) + "".join(lines).encode("utf-8", "surrogateescape")
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
            self._connection.write_refusal(body.error)
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

    def sends_files(self) -> bool:
        """Whether `send_file` may be used now: a started answer framed by
        Content-Length, with a body, on a plain TCP transport (TLS must encrypt every
        byte in user space)."""
        connection = self._connection
        transport = connection.transport
        return (
            self.length is not None
            and not self._chunked
            and not self._head_only
            and connection.front.scheme == "http"
            and transport is not None
            and transport.get_extra_info("sslcontext") is None
            and transport.get_extra_info("socket") is not None
        )

    async def send_file(self, fd: int, offset: int, count: int) -> int:
        """Send `count` bytes of file `fd` from `offset` with `os.sendfile` on the raw
        socket; the bytes sent (fewer only when the file ends first).

        The transport's buffer is let drain first, so the bytes keep their order; then
        the kernel copies from the page cache to the socket, a step at a time, waiting
        for the socket to be writable in between (at most `send_timeout` per wait,
        then the connection is cut, as `drain` does). The wait watches a duplicate of
        the socket's descriptor: the event loop keeps the transport's own to itself.
        The call runs on the loop, as nginx's does without aio: its source is usually the
        page cache (a body sent whole was read whole when it was checked).
        """
        if self._head_only or count <= 0:
            return count if self._head_only else 0
        connection = self._connection
        await self._flushed()
        transport = connection.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if connection.lost or sock is None or transport.is_closing():
            raise ConnectionResetError("the client connection was lost")
        copy = os.dup(sock.fileno())
        sent = 0
        try:
            while sent < count:
                if connection.lost:
                    raise ConnectionResetError("the client connection was lost")
                try:
                    step = os.sendfile(copy, fd, offset + sent, min(SENDFILE_STEP, count - sent))
                except BlockingIOError:
                    await self._socket_writable(copy)
                    continue
                if step == 0:
                    return sent  # the file ends early
                sent += step
        finally:
            os.close(copy)
        return sent

    async def _flushed(self) -> None:
        """Wait until the transport has passed all it holds to the kernel."""
        connection = self._connection
        transport = connection.transport
        assert transport is not None
        if transport.get_write_buffer_size() == 0:
            return
        low, high = transport.get_write_buffer_limits()
        # a high-water mark of 0 pauses the protocol until the buffer is empty
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            await connection.drain()
        finally:
            if not connection.lost and not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    async def _socket_writable(self, fd: int) -> None:
        """Wait until socket `fd` can take bytes; cut the connection after
        `send_timeout` (a client that stopped reading)."""
        connection = self._connection
        loop = connection.loop
        ready: asyncio.Future[None] = loop.create_future()

        def writable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(fd, writable)
        try:
            await asyncio.wait_for(ready, connection.front.front_limits.send_timeout)
        except TimeoutError:
            limits_log.info("closing a connection from %s: it stopped reading", connection.peer)
            connection.cut()
            raise ConnectionResetError("the client stopped reading") from None
        finally:
            loop.remove_writer(fd)

    async def end(self) -> None:
        """The started answer is complete."""
        if self._chunked and not self._head_only:
            self._connection.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Cut the connection: the client sees a truncated answer."""
        self.close = True
        self._connection.cut()
