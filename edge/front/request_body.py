"""A request body as it arrives on an HTTP/1.1 connection: the `BodyStream` the engine
reads, with bounded buffering (reading from the client pauses above `BODY_HIGH_WATER`)
and `Expect: 100-continue` answered when the engine first reads (RFC 9110 10.1.1)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from edge.front.h1_wire import BodyTimeout, FrameError

if TYPE_CHECKING:
    from edge.front.protocol import FrontProtocol

#: Request-body bytes buffered before reading from the client pauses.
BODY_HIGH_WATER = 256 * 1024


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


def announced_body(connection: FrontProtocol, headers: CIMultiDict[str]) -> RequestBody | None:
    """The body a request head announces, or None (no body, or Content-Length: 0);
    raises `FrameError` for framing we refuse."""
    chunked = "Transfer-Encoding" in headers
    length_field = headers.get("Content-Length")
    if chunked and length_field is not None:
        # RFC 9112 6.1: a message with both is a smuggling attempt, refused
        raise FrameError(400, "both Content-Length and Transfer-Encoding")
    if chunked and (
        len(headers.getall("Transfer-Encoding")) > 1
        or headers.getone("Transfer-Encoding").strip().lower() != "chunked"
    ):
        # RFC 9112 6.1: chunked must be the last coding, and no other is offered;
        # anything else is framing we cannot agree on with the next hop
        raise FrameError(400, "unsupported Transfer-Encoding")
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
    return RequestBody(connection, length, expect)
