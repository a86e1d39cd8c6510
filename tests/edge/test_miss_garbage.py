"""What a miss leaves to the cyclic collector: nothing. Objects that die in reference
cycles wait for a collection, and every collection walks them all; a profile of cold
misses spent 13-17% of the event loop in the collector, most of it on the lean
client's answers (the parser holds the answer's bound callbacks: about 40 objects of
cyclic garbage per miss). These tests free an answer with the collector off."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from multidict import CIMultiDict

from edge.upstream_client import LeanResponse
from edge.upstream_session import make_session, send
from edge.upstream_wire import _Request
from tests.edge.test_upstream_client import RawServer, fetch, plain, raw_server, serve_requests

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The cyclic collector off for the test: only reference counting frees."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def serve_plain(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: RawServer) -> None:
    await serve_requests(r, w, s, plain)


@pytest.mark.usefixtures("collector_off")
async def test_a_released_answer_is_freed_without_the_collector() -> None:
    async with raw_server(serve_plain) as server, make_session() as session:
        response, body = await fetch(session, server.url, "/a")
        assert body == b"plain /a\n"
        assert isinstance(response, LeanResponse)
        gone = weakref.ref(response)
        del response
        assert gone() is None, gc.get_referrers(gone())


@pytest.mark.usefixtures("collector_off")
async def test_a_closed_answer_is_freed_without_the_collector() -> None:
    async with raw_server(serve_plain) as server, make_session() as session:
        headers = CIMultiDict({"Host": "www.example.com"})
        request = _Request("GET", "/a", headers, None)
        response = await send(session, server.url, request, "p", lambda: None)
        assert isinstance(response, LeanResponse)
        response.close()  # its body never read (a client gone mid-fill)
        gone = weakref.ref(response)
        del response
        assert gone() is None
