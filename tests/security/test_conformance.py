"""Conformance under attack: an origin that floods a request with 1xx responses, and
hides hop-by-hop fields in them, against a real edge process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.conformance_origin import FLOOD, HintsOrigin
from tests.support.raw_client import raw_exchange
from tests.support.raw_origin import edge_in_front

HOST = "www.example.com"


@pytest.fixture(scope="module")
def hints_origin() -> Iterator[HintsOrigin]:
    with HintsOrigin() as origin:
        yield origin


@pytest.fixture(scope="module")
def edge_listen(
    tmp_path_factory: pytest.TempPathFactory, hints_origin: HintsOrigin
) -> Iterator[str]:
    with edge_in_front(tmp_path_factory.mktemp("conformance"), hints_origin) as listen:
        yield listen


async def test_a_flood_of_early_hints_is_bounded_and_stripped(
    edge_listen: str, hints_origin: HintsOrigin
) -> None:
    raw = await raw_exchange(
        edge_listen,
        f"GET /hints-flood HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert raw.count(b"HTTP/1.1 103 Early Hints\r\n") == 8 < FLOOD
    assert raw.count(b"Link: </flood.css>; rel=preload") == 8
    assert b"X-Secret" not in raw
    assert raw.endswith(b"/hints-flood")
    # the final answer is what was stored; the hints never are
    raw = await raw_exchange(
        edge_listen,
        f"GET /hints-flood HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"/hints-flood")
    assert hints_origin.requests["/hints-flood"] == 1


async def test_an_http_1_0_client_gets_no_informational_answer(
    edge_listen: str, hints_origin: HintsOrigin
) -> None:
    """RFC 9110 15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0 client"."""
    raw = await raw_exchange(
        edge_listen, f"GET /hints-flood-10 HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode()
    )
    assert raw.startswith(b"HTTP/1.0 200 ") or raw.startswith(b"HTTP/1.1 200 ")
    assert b" 103 " not in raw
