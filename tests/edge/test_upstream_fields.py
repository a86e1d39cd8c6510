"""The lean client's answer fields: decoded once when the head ends, the map made
only when asked for, and the framing questions answered from the pairs alone; the
head's bounds hold as before (a line too long, too many lines)."""

from __future__ import annotations

import asyncio

import pytest

from edge.upstream_client import MAX_HEADERS, MAX_LINE, LeanResponse
from edge.upstream_wire import UpstreamError
from tests.edge.test_upstream_client import Handler, RawServer, get, raw_server, serve_requests

pytestmark = pytest.mark.timeout(30)


def answering(head: bytes, body: bytes = b"") -> Handler:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await serve_requests(r, w, s, lambda target: head + body)

    return handler


async def test_fields_are_the_pairs_as_sent_and_the_map_is_made_when_asked() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Twice: one  \r\nConnection: keep-alive\r\n"
        b"x-twice: two\r\nLatin: caf\xe9\r\n\r\n"
    )
    async with raw_server(answering(head, b"ok")) as server:
        response, body = await get(server.url, "/f")
    assert isinstance(response, LeanResponse)
    assert body == b"ok"
    # in order, trailing whitespace off, latin-1 decoded, nothing filtered here
    assert response.header_pairs == (
        ("Content-Length", "2"),
        ("X-Twice", "one"),
        ("Connection", "keep-alive"),
        ("x-twice", "two"),
        ("Latin", "caf\xe9"),
    )
    assert response._headers is None  # not made by reading the body
    assert response.headers.getall("x-twice") == ["one", "two"]
    assert response.headers is response.headers  # made once
    assert not response.close_delimited


@pytest.mark.parametrize(
    ("framing", "close_delimited"),
    [
        (b"Content-Length: 5\r\n", False),
        (b"content-length: 5\r\n", False),
        (b"Transfer-Encoding: chunked\r\n", False),
        (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", False),
        (b"TRANSFER-ENCODING: gzip, Chunked\r\n", False),
        (b"", True),
    ],
)
async def test_close_delimited_is_read_from_the_pairs(
    framing: bytes, close_delimited: bool
) -> None:
    chunked = b"chunked" in framing.lower()
    body = b"5\r\nabcde\r\n0\r\n\r\n" if chunked else b"abcde"

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\n" + framing + b"X-A: b\r\n\r\n" + body)
        await w.drain()
        w.close()

    async with raw_server(handler) as server:
        response, got = await get(server.url, "/c")
    assert got == b"abcde"
    assert isinstance(response, LeanResponse)
    assert response.close_delimited is close_delimited
    assert response._headers is None
    # the map says the same
    assert ("content-length" in response.headers) is (b"length" in framing.lower())


async def test_an_answer_without_a_body_is_never_close_delimited() -> None:
    async with raw_server(answering(b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n")) as server:
        response, body = await get(server.url, "/n")
    assert (response.status, body) == (204, b"")
    assert not response.close_delimited


async def test_the_head_s_bounds_hold_with_fields_decoded_at_its_end() -> None:
    too_many = b"".join(b"X-F%d: v\r\n" % n for n in range(MAX_HEADERS + 1))
    async with raw_server(answering(b"HTTP/1.1 200 OK\r\n" + too_many + b"\r\n")) as server:
        with pytest.raises(UpstreamError, match="too many header fields"):
            await get(server.url, "/many")
    long_line = b"X-Long: " + b"v" * MAX_LINE + b"\r\n"
    async with raw_server(answering(b"HTTP/1.1 200 OK\r\n" + long_line + b"\r\n")) as server:
        with pytest.raises(UpstreamError, match="header field too long"):
            await get(server.url, "/long")
    exactly = b"".join(b"X-F%d: v\r\n" % n for n in range(MAX_HEADERS))
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + exactly[len(b"X-F0: v\r\n") :]
    async with raw_server(answering(head + b"\r\n")) as server:
        response, _ = await get(server.url, "/exact")
    assert len(response.header_pairs) == MAX_HEADERS
