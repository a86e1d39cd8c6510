"""The HTTP/1.1 front's `ResponseSink`: frames the engine's answer for one exchange on
the wire (Content-Length, chunked or close-delimited; 1xx heads; HEAD answered bare)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from multidict import CIMultiDict

from edge.front.h1_wire import JOIN_BELOW, FrameError, header_block, status_line
from edge.front.request_body import RequestBody
from edge.front.types import NoBody, RequestHead

if TYPE_CHECKING:
    from edge.front.protocol import FrontProtocol

_NO_BODY_STATUS = frozenset((204, 304))


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

    async def end(self) -> None:
        """The started answer is complete."""
        if self._chunked and not self._head_only:
            self._connection.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Cut the connection: the client sees a truncated answer."""
        self.close = True
        self._connection.cut()
