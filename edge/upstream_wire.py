"""The wire to the next tier, shared by the shield ring and the origin pool.

`UpstreamResponse` (a response whose body is still streaming; `AiohttpResponse` is
aiohttp's, `edge.upstream_client.LeanResponse` the lean client's), `UpstreamError`
(ours: aiohttp's exceptions stop here), the connector that never reuses a connection
holding unasked-for bytes, and `_send`, aiohttp's one request to one peer, which
tells a failure to connect (safe to retry elsewhere) from one after the request went
out. `edge.upstream_session` makes the session and picks the client for a request;
`edge.upstream` re-exports what callers need with `ShieldRing` and `OriginPool`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

log = logging.getLogger("edgeshield.upstream")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Marks an error a node generated itself (not one it relayed from an origin).
GENERATED_ERROR_HEADER = "X-Edgeshield-Error"
#: The value of GENERATED_ERROR_HEADER when the origin could not be reached at all.
UNREACHABLE = "unreachable"


#: Seconds a body read waits before it checks that its connection is still open.
BODY_POLL = 1.0


class UpstreamError(Exception):
    """The next tier could not give an answer: `status` is what the client should see.

    `reason` is short and names nothing internal (it goes into the client's error
    body); `detail` is for the log only and may name addresses and errors.
    `unreachable`: no answer came because nothing could be reached (connection refused
    or reset before an answer, connect or answer timeout), as opposed to an answer the
    node could not use (RFC 9111 4.2.4 lets a cache serve stale when disconnected).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        detail: str = "",
        retry_after: int | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        self.unreachable = unreachable


class UpstreamResponse:
    """A response from the next tier whose body may still be arriving.

    What every client of the next tier hands the engine: `AiohttpResponse` (below)
    and the lean client's (`edge.upstream_client`) implement the body and the
    connection's end; the framing questions and `on_done` are common.
    """

    def __init__(
        self, peer: str, status: int, headers: CIMultiDictProxy[str], on_done: Callable[[], None]
    ) -> None:
        self.peer = peer
        self.status = status
        self.headers = headers
        self._on_done = on_done
        self._done = False

    @property
    def close_delimited(self) -> bool:
        """Whether the body ends only where the upstream closes the connection.

        RFC 9112 6.3: a body is framed by chunked Transfer-Encoding (item 4) or by
        Content-Length (item 6); with neither, a response body lasts until the server
        closes the connection (item 8), and a connection cut in the middle looks just
        like the end. Responses that have no body (1xx, 204, 304) are not.
        """
        if self.status < 200 or self.status in (204, 304):
            return False
        # read from the pairs, which every client has (the lean one makes no map of
        # them unless asked)
        codings = []
        for name, value in self.header_pairs:
            lower = name.lower()
            if lower == "content-length":
                return False
            if lower == "transfer-encoding":
                codings.append(value)
        return not ",".join(codings).lower().rstrip(" ,").endswith("chunked")

    @property
    def header_pairs(self) -> tuple[tuple[str, str], ...]:
        """Headers as received, decoded, in order."""
        raise NotImplementedError

    def iter_chunks(self, size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamError if the upstream stops short."""
        raise NotImplementedError

    def take_whole(self) -> bytes | None:
        """The whole body at once when all of it has arrived and nothing broke (what
        `iter_chunks` would yield, joined), else None: then read `iter_chunks`. A
        small answer usually arrives with its head, and taking it whole spares the
        reader an async generator per answer."""
        return None

    def on_done(self, callback: Callable[[], None]) -> None:
        """Also run `callback` once the response is released or closed."""
        previous = self._on_done

        def both() -> None:
            previous()
            callback()

        self._on_done = both

    def release(self) -> None:
        """Give the connection back (or close it if the body was not read)."""
        if not self._done:
            self._done = True
            self._release()
            self._on_done()

    def close(self) -> None:
        """Drop the connection, e.g. after the body was cut short."""
        if not self._done:
            self._done = True
            self._close()
            self._on_done()

    def _release(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class AiohttpResponse(UpstreamResponse):
    """An `UpstreamResponse` read through aiohttp's client (requests with a body, and
    https peers)."""

    def __init__(
        self, response: aiohttp.ClientResponse, peer: str, on_done: Callable[[], None]
    ) -> None:
        super().__init__(peer, response.status, response.headers, on_done)
        self._response = response
        connection = response.connection
        self._protocol = connection.protocol if connection is not None else None

    @property
    def header_pairs(self) -> tuple[tuple[str, str], ...]:
        """Headers as received, decoded, in order."""
        return tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self._response.raw_headers
        )

    async def iter_chunks(self, size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamError if the upstream stops short."""
        content = self._response.content
        try:
            while chunk := await self._read(content, size):
                yield chunk
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamError(
                502, "upstream broke off the body", detail=f"{self.peer}: {exc!r}"
            ) from None
        if content.exception() is not None:
            raise UpstreamError(502, "upstream broke off the body", detail=self.peer)

    async def _read(self, content: aiohttp.StreamReader, size: int) -> bytes:
        """Up to `size` body bytes (b"" at the end), checking while it waits that the
        connection is still there.

        When an upstream breaks the framing in the middle of a body (a malformed chunk
        size), aiohttp closes the connection and stops the read timeout, but does not
        tell the body's reader, which would then wait forever: a gone connection with
        the body unfinished is a broken body.
        """
        # bytes already buffered (all of a small body, usually) need no timer
        chunk = content.read_nowait(size)
        if chunk or content.at_eof():
            return chunk
        while True:
            waiting = asyncio.timeout(BODY_POLL)
            try:
                async with waiting:
                    return await content.read(size)
            except TimeoutError:
                if not waiting.expired():
                    raise  # aiohttp's own read timeout
            if self._protocol is not None and not self._protocol.is_connected():
                raise UpstreamError(502, "upstream broke the body's framing", detail=self.peer)

    def _release(self) -> None:
        self._response.release()

    def _close(self) -> None:
        self._response.close()


class _Closable(Protocol):
    def close(self) -> None: ...


class _ReuseCheckingConnector(aiohttp.TCPConnector):
    """A connector that never reuses a kept-alive connection holding unasked-for bytes.

    RFC 9112 6.3: bytes after a body delimited by Content-Length are not part of it.
    On a kept-alive connection aiohttp parses such bytes as the response to the next
    request it sends there, so an origin (or a broken middlebox) could answer a
    request it was never sent: response splitting into another cache key. aiohttp
    returns a connection to its pool at the body's end, and bytes that arrive after
    that are queued on it; a connection taken from the pool with anything queued is
    closed instead of used.
    """

    #: the session's lean client (edge.upstream_client), closed with the connector
    lean: _Closable | None = None

    async def _get(self, *args: Any, **kwargs: Any) -> Any:
        while True:
            connection = await super()._get(*args, **kwargs)
            if connection is None or connection.protocol is None:
                return connection
            if not connection.protocol.should_close:
                return connection
            log.warning("upstream sent bytes nobody asked for: connection closed")
            connection.close()

    async def close(self, *, abort_ssl: bool = False) -> None:
        """Close every connection, the lean client's too."""
        if self.lean is not None:
            self.lean.close()
        await super().close(abort_ssl=abort_ssl)


@dataclass
class _Request:
    method: str
    target: str
    headers: CIMultiDict[str]
    body: AsyncIterable[bytes] | None


async def _send(
    session: aiohttp.ClientSession,
    base_url: str,
    request: _Request,
    peer: str,
    on_done: Callable[[], None],
) -> UpstreamResponse:
    """One attempt; raises _ConnectFailure or UpstreamError."""
    try:
        response = await session.request(
            request.method,
            base_url + request.target,
            headers=request.headers,
            data=request.body,
            allow_redirects=False,
            compress=None,
        )
    except aiohttp.ClientConnectorError as exc:
        on_done()
        raise _ConnectFailure(f"cannot connect to {peer}: {exc.os_error or exc}") from None
    except TimeoutError:
        on_done()
        raise UpstreamError(
            504, "upstream did not answer in time", detail=peer, unreachable=True
        ) from None
    except aiohttp.ServerDisconnectedError:
        on_done()
        raise _ConnectFailure(f"{peer} closed the connection") from None
    except aiohttp.ClientError as exc:
        on_done()
        raise UpstreamError(502, "upstream request failed", detail=f"{peer}: {exc}") from None
    return AiohttpResponse(response, peer, on_done)


class _ConnectFailure(Exception):
    """The request never reached the peer, so it is safe to send it elsewhere."""
