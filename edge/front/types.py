"""The request and response as the engine sees them, whatever protocol carried them.

A front (an HTTP server) turns each client request into a `RequestHead` and a
`BodyStream`, and gives the engine a `ResponseSink` to answer into. The engine knows
caching and these three types; a front knows framing and its own types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NamedTuple, Protocol, runtime_checkable

from multidict import CIMultiDict, CIMultiDictProxy


class RequestHead(NamedTuple):
    """A request's head, as received (a named tuple: one is made per request)."""

    method: str
    #: the request target exactly as sent (origin-form or absolute-form)
    target: str
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    #: the connected peer's address (None when the transport has none)
    peer: str | None
    #: "http" or "https", as the front was reached
    scheme: str = "http"
    version: tuple[int, int] = (1, 1)


class BodyStream(Protocol):
    """A request's body, read once as it arrives."""

    @property
    def exists(self) -> bool:
        """Whether the request has a body at all (framed by length or chunked)."""
        ...

    @property
    def length(self) -> int | None:
        """The body's length when the request declared it."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive."""
        ...


class ResponseSink(Protocol):
    """Where the engine writes one answer: a whole one, or a head then body chunks."""

    def send(
        self,
        status: int,
        headers: CIMultiDict[str],
        body: bytes | None = None,
        *,
        close: bool = False,
    ) -> None:
        """A whole answer held in memory (the fast lane's). `close`: close the
        connection after it (the rest of what the client sent is not trusted)."""
        ...

    async def start(self, status: int, headers: CIMultiDict[str]) -> None:
        """Send the head of a streamed answer (its framing follows Content-Length if
        the headers carry one, else the front's own)."""
        ...

    async def write(self, chunk: bytes) -> None:
        """Send body bytes of a started answer (waits while the client is slow)."""
        ...

    async def end(self) -> None:
        """The started answer is complete."""
        ...

    def abort(self) -> None:
        """Cut the connection: the client sees a truncated answer, never a short body
        that looks whole."""
        ...

    def informational(self, status: int, headers: CIMultiDict[str]) -> None:
        """Send a 1xx head (RFC 9110 15.2; 103 Early Hints, RFC 8297) before the final
        answer; any number may precede it. A no-op once the final head has left, and
        for an HTTP/1.0 client, which cannot receive one (RFC 9110 15.2)."""
        ...


@runtime_checkable
class FileSink(Protocol):
    """A `ResponseSink` that can also send body bytes straight from a file, with
    `os.sendfile` on its socket: the kernel copies them from the page cache, and
    nothing of them passes through Python (a front on plain TCP has it; one on TLS or
    HTTP/2, which must frame or encrypt every byte, does not)."""

    def sends_files(self) -> bool:
        """Whether `send_file` can be used for the started answer now."""
        ...

    async def send_file(self, fd: int, offset: int, count: int) -> int:
        """Send `count` bytes of the open file `fd` from `offset` as body bytes of the
        started answer (waits while the client is slow); the bytes sent, fewer than
        `count` only when the file ends first (the caller then cuts the answer)."""
        ...


class NoBody:
    """The body of a request that has none."""

    exists = False
    length = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """No bytes."""
        return
        yield b""  # pragma: no cover
