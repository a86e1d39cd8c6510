"""The fields of an origin's answer through a real edge's miss path, where they are
filtered once (hop-by-hop and Connection-named fields out, RFC 9110 7.6.1) and kept as
one map for every decision: what the client gets on the miss and on the hit after it,
from a raw origin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.miss_fields_origin import MissFieldsOrigin
from tests.support.raw_client import raw_exchange
from tests.support.raw_origin import edge_in_front

HOST = "www.example.com"


@pytest.fixture(scope="module")
def origin() -> Iterator[MissFieldsOrigin]:
    with MissFieldsOrigin() as server:
        yield server


@pytest.fixture(scope="module")
def edge_listen(
    tmp_path_factory: pytest.TempPathFactory, origin: MissFieldsOrigin
) -> Iterator[str]:
    with edge_in_front(tmp_path_factory.mktemp("miss-fields"), origin) as listen:
        yield listen


async def get(listen: str, path: str) -> tuple[list[tuple[str, str]], bytes]:
    """GET `path` from the edge: the answer's field lines in order, and its body."""
    raw = await raw_exchange(
        listen, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200 "), lines[0]
    fields = [(name, value) for name, _, value in (line.partition(": ") for line in lines[1:])]
    if values(fields, "Transfer-Encoding") == ["chunked"]:
        body = dechunked(body)
    return fields, body


def dechunked(data: bytes) -> bytes:
    """A chunked body's bytes (RFC 9112 7.1), no extensions or trailers expected."""
    out = b""
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out += rest[:size]
        data = rest[size + 2 :]


def values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [value for field, value in fields if field.lower() == name.lower()]


def cache_status(fields: list[tuple[str, str]]) -> str:
    return values(fields, "Cache-Status")[0]


async def test_a_field_sent_twice_reaches_the_client_twice_and_is_stored_twice(
    edge_listen: str, origin: MissFieldsOrigin
) -> None:
    miss, body = await get(edge_listen, "/twice")
    assert body == b"/twice"
    assert "fwd=uri-miss" in cache_status(miss)
    assert values(miss, "X-Twice") == ["one", "two"]
    assert values(miss, "Link") == ["</a.css>; rel=preload", "</b.js>; rel=preload"]
    hit, body = await get(edge_listen, "/twice")
    assert body == b"/twice"
    assert "hit" in cache_status(hit)
    assert values(hit, "X-Twice") == ["one", "two"]
    assert values(hit, "Link") == ["</a.css>; rel=preload", "</b.js>; rel=preload"]
    assert origin.requests["/twice"] == 1


async def test_a_chunked_answer_keeps_its_repeated_field_and_gets_our_framing(
    edge_listen: str, origin: MissFieldsOrigin
) -> None:
    # a body of unknown length streams to the client as it comes: chunked by the edge
    # itself (the origin's Transfer-Encoding is hop-by-hop, dropped), once
    miss, body = await get(edge_listen, "/chunked")
    assert "fwd=uri-miss" in cache_status(miss)
    assert body == b"/chunked"
    assert values(miss, "X-Twice") == ["one", "two"]
    assert values(miss, "Transfer-Encoding") == ["chunked"]
    assert values(miss, "Content-Length") == []
    # stored whole, it has a length
    hit, body = await get(edge_listen, "/chunked")
    assert "hit" in cache_status(hit)
    assert body == b"/chunked"
    assert values(hit, "X-Twice") == ["one", "two"]
    assert values(hit, "Transfer-Encoding") == []
    assert values(hit, "Content-Length") == ["8"]
    assert origin.requests["/chunked"] == 1


async def test_fields_connection_names_are_dropped_on_the_miss_and_the_hit(
    edge_listen: str, origin: MissFieldsOrigin
) -> None:
    for expected in ("fwd=uri-miss", "hit"):
        fields, body = await get(edge_listen, "/hop")
        assert expected in cache_status(fields)
        assert body == b"/hop"
        assert values(fields, "X-Hop") == []
        assert values(fields, "Keep-Alive") == []
        # the edge's own Connection (this client asked for close), not the origin's
        assert values(fields, "Connection") == ["close"]
        assert values(fields, "X-Kept") == ["kept"]
        assert values(fields, "Cache-Control") == ["max-age=3600"]
    assert origin.requests["/hop"] == 1


async def test_every_connection_line_names_fields_to_drop(
    edge_listen: str, origin: MissFieldsOrigin
) -> None:
    for expected in ("fwd=uri-miss", "hit"):
        fields, body = await get(edge_listen, "/connection-twice")
        assert body == b"/connection-twice"
        assert expected in cache_status(fields)
        assert values(fields, "X-Hop-A") == values(fields, "X-Hop-B") == []
        assert values(fields, "X-Kept") == ["kept"]
    assert origin.requests["/connection-twice"] == 1
