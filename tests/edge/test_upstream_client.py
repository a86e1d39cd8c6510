"""The lean upstream client (edge.upstream_client) against real raw-socket servers that
attack it: responses split in two, bytes after a body, bad chunk sizes, oversized
heads, slow drips, cuts mid-body, 1xx floods; and its pool, which reuses a
connection only after a clean answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from multidict import CIMultiDict

from edge.informational import relay_informational_to
from edge.upstream_client import BUFFER_HIGH, MAX_HEADERS, LeanResponse
from edge.upstream_session import make_session, send
from edge.upstream_wire import UpstreamError, UpstreamResponse, _ConnectFailure, _Request
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawServer"], Awaitable[None]]


class RawServer:
    """A server on 127.0.0.1:0 that runs `handler` on every connection it accepts."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        #: connections whose client closed them (read returned b"")
        self.closed_by_client = 0
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def wait_closed_by_client(self, count: int) -> None:
        """Until `count` connections were closed from the client's side."""
        async with asyncio.timeout(10):
            while self.closed_by_client < count:
                self.changed.clear()
                await self.changed.wait()

    def saw_close(self) -> None:
        self.closed_by_client += 1
        self.changed.set()


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    server = RawServer(handler)
    server._server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    try:
        yield server
    finally:
        server._server.close()
        await server._server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> str:
    """One request head; the request line's target."""
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b" ", 2)[1].decode()


async def serve_requests(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    server: RawServer,
    answer: Callable[[str], bytes],
) -> None:
    """Answer each request on the connection with `answer(target)`; note a client close."""
    while True:
        try:
            target = await read_head(reader)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                server.saw_close()
            return
        writer.write(answer(target))
        await writer.drain()


def plain(target: str) -> bytes:
    body = f"plain {target}\n".encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def get(
    url: str, target: str, *, method: str = "GET", read_timeout: float = 5.0, **fields: str
) -> tuple[UpstreamResponse, bytes]:
    """One request through a session of its own: the response and its whole body."""
    async with make_session(read_timeout=read_timeout) as session:
        response, body = await fetch(session, url, target, method=method, **fields)
    return response, body


async def fetch(
    session: aiohttp.ClientSession, url: str, target: str, *, method: str = "GET", **fields: str
) -> tuple[UpstreamResponse, bytes]:
    headers = CIMultiDict({"Host": "www.example.com", **fields})
    response = await send(session, url, _Request(method, target, headers, None), "p", lambda: None)
    assert isinstance(response, LeanResponse)
    try:
        body = b"".join([chunk async for chunk in response.iter_chunks()])
    except BaseException:
        response.close()
        raise
    response.release()
    return response, body


async def test_a_connection_is_reused_after_clean_answers() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await serve_requests(r, w, s, plain)

    async with raw_server(handler) as server, make_session() as session:
        for n in range(5):
            response, body = await fetch(session, server.url, f"/a{n}")
            assert (response.status, body) == (200, f"plain /a{n}\n".encode())
        assert server.connections == 1


async def test_a_chunked_answer_is_read_whole_and_the_connection_reused() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await serve_requests(
            r,
            w,
            s,
            lambda t: (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            ),
        )

    async with raw_server(handler) as server, make_session() as session:
        for _ in range(3):
            response, body = await fetch(session, server.url, "/c")
            assert body == b"abcde" and not response.close_delimited
        assert server.connections == 1


async def test_a_response_split_in_two_never_answers_the_next_request() -> None:
    """RFC 9112 6.3: bytes after a Content-Length body are not part of it; read as the
    next response, they would answer a request never sent (response splitting)."""

    def split(target: str) -> bytes:
        if target == "/split":
            smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" + smuggled
        return plain(target)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await serve_requests(r, w, s, split)

    async with raw_server(handler) as server, make_session() as session:
        _response, body = await fetch(session, server.url, "/split")
        assert body == b"first"
        _response, body = await fetch(session, server.url, "/victim")
        assert body == b"plain /victim\n"
        assert server.connections == 2


async def test_bytes_arriving_while_idle_close_the_connection() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        target = await read_head(r)
        w.write(plain(target))
        await w.drain()
        if target == "/late":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
            await w.drain()
        await serve_requests(r, w, s, plain)

    async with raw_server(handler) as server, make_session() as session:
        _response, body = await fetch(session, server.url, "/late")
        assert body == b"plain /late\n"
        await server.wait_closed_by_client(1)  # the pooled connection saw the bytes
        _response, body = await fetch(session, server.url, "/victim")
        assert body == b"plain /victim\n"
        assert server.connections == 2


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nffffffffffffffffff\r\n",
        b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ],
)
async def test_broken_framing_is_an_error_not_a_hang(framing: bytes) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\n" + framing)
        await w.drain()
        await r.read()  # hold the connection open: only the framing may end it

    async with raw_server(handler) as server:
        with pytest.raises(UpstreamError) as caught:
            await get(server.url, "/bad")
        assert caught.value.status == 502


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-F%d: v\r\n" % n for n in range(MAX_HEADERS + 1))
        + b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 " + b"R" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    ],
)
async def test_an_oversized_or_unasked_head_is_refused(head: bytes) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await read_head(r)
        w.write(head)
        await w.drain()
        await r.read()

    async with raw_server(handler) as server:
        with pytest.raises(UpstreamError) as caught:
            await get(server.url, "/big-head")
        assert caught.value.status == 502


async def test_a_slow_drip_within_the_read_timeout_is_read_whole() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await read_head(r)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789":
            w.write(bytes([byte]))
            await w.drain()
            await asyncio.sleep(0.002)

    async with raw_server(handler) as server:
        response, body = await get(server.url, "/drip")
        assert (response.status, body) == (200, b"0123456789")


async def test_silence_past_the_read_timeout_ends_the_answer() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        target = await read_head(r)
        if target == "/stall-body":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
            await w.drain()
        await r.read()

    async with raw_server(handler) as server:
        with pytest.raises(UpstreamError) as caught:
            await get(server.url, "/stall-head", read_timeout=0.3)
        assert caught.value.status == 504 and caught.value.unreachable
        with pytest.raises(UpstreamError) as caught:
            await get(server.url, "/stall-body", read_timeout=0.3)
        assert caught.value.status == 502


async def test_a_cut_mid_body_is_broken_and_a_close_delimited_body_ends_at_the_close() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        target = await read_head(r)
        if target == "/cut":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        elif target == "/cut-chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the close")
        await w.drain()

    async with raw_server(handler) as server:
        for target in ("/cut", "/cut-chunked"):
            with pytest.raises(UpstreamError):
                await get(server.url, target)
        response, body = await get(server.url, "/close")
        assert body == b"until the close" and response.close_delimited


async def test_a_connection_refused_or_closed_unanswered_is_a_connect_failure() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await read_head(r)  # and close without a word

    async with raw_server(handler) as server:
        with pytest.raises(_ConnectFailure):
            await get(server.url, "/mute")
        url = server.url
    with pytest.raises(_ConnectFailure):
        await get(url, "/gone")


async def test_a_cut_inside_the_head_is_an_error_not_a_connect_failure() -> None:
    """The request reached the peer, which began an answer: not safe to resend."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Len")
        await w.drain()

    async with raw_server(handler) as server:
        with pytest.raises(UpstreamError) as caught:
            await get(server.url, "/half-head")
        assert caught.value.status == 502 and not caught.value.unreachable


async def test_a_pooled_connection_the_peer_closed_is_replaced_quietly() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        target = await read_head(r)
        w.write(plain(target))
        await w.drain()  # then close: the client's pooled connection is stale

    async with raw_server(handler) as server, make_session() as session:
        for n in range(3):
            _response, body = await fetch(session, server.url, f"/one-shot{n}")
            assert body == f"plain /one-shot{n}\n".encode()
        assert server.connections == 3


async def test_an_answer_to_head_has_no_body_and_its_connection_is_not_reused() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await serve_requests(r, w, s, lambda t: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")

    async with raw_server(handler) as server, make_session() as session:
        response, body = await fetch(session, server.url, "/h", method="HEAD")
        assert (response.status, body, response.headers["content-length"]) == (200, b"", "50")
        await server.wait_closed_by_client(1)


async def test_informational_heads_are_relayed_and_bounded() -> None:
    flood = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" * 50

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await serve_requests(r, w, s, lambda t: flood + plain(t))

    relayed: list[tuple[int, str]] = []
    relay_informational_to(lambda status, fields: relayed.append((status, fields["Link"])))
    try:
        async with raw_server(handler) as server:
            response, body = await get(server.url, "/hints")
    finally:
        relay_informational_to(None)
    assert (response.status, body) == (200, b"plain /hints\n")
    assert relayed == [(103, "</a.css>; rel=preload")] * 8


async def test_a_line_break_in_a_field_is_never_sent() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await serve_requests(r, w, s, plain)

    async with raw_server(handler) as server:
        with pytest.raises(UpstreamError):
            await get(server.url, "/x", **{"X-Evil": "a\r\nX-Injected: 1"})
        assert server.connections == 0


async def test_a_body_the_reader_does_not_take_stops_the_socket_being_read() -> None:
    """Backpressure: a big body nobody reads is not buffered whole; read, it all comes."""
    size = 32 * 1024 * 1024

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"x" * 65536
        for _ in range(size // len(block)):
            w.write(block)
            await w.drain()

    async with raw_server(handler) as server, make_session() as session:
        headers = CIMultiDict({"Host": "www.example.com"})
        response = await send(
            session, server.url, _Request("GET", "/big", headers, None), "p", lambda: None
        )
        assert isinstance(response, LeanResponse)
        # the socket stops being read past the mark
        await eventually(lambda: response._paused, "the socket to stop being read", 10)
        # one read of the socket at most past the mark
        assert response._buffered <= BUFFER_HIGH + 256 * 1024
        received = 0
        async for chunk in response.iter_chunks():
            received += len(chunk)
        response.release()
        assert received == size
