"""The engine served through the aiohttp front (edge.front.aiohttp_adapter), in-process.

A real aiohttp server on 127.0.0.1 runs `aiohttp_handler(engine)`; the engine has a
memory store and the node's real upstream onto a real origin server. These check the
seam itself: our request head in, answers through the sink, the Outcome back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from edge.cache.purge import PurgeRules
from edge.engine import Engine, EngineOptions
from edge.front.aiohttp_adapter import aiohttp_handler
from edge.metrics import NodeMetrics
from edge.node import TierUpstream
from edge.store import MemoryStore
from edge.upstream import make_session
from fleet.config import Service
from tests.support.origin import OriginServer, running_origin
from tests.support.ports import free_port

HOST = "www.example.com"


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    yield from running_origin()


class Clock:
    """A clock the test sets (the engine's `clock`)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
async def base(origin: OriginServer, clock: Clock) -> AsyncIterator[str]:
    """The URL of an in-process edge in front of `origin`, on the test's clock."""
    service = Service(name="www", hosts=(HOST,), origins=(origin.url,))
    session = make_session()
    upstream = TierUpstream((service,), None, session)
    upstream.start()
    engine = Engine(
        (service,),
        EngineOptions(node_name="edge-t"),
        MemoryStore(64 * 1024 * 1024),
        upstream,
        PurgeRules((service,)),
        NodeMetrics("edge-t", "edge"),
        clock=clock,
    )
    runner = web.ServerRunner(web.Server(aiohttp_handler(engine)), handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await engine.close()
        await upstream.stop()
        await session.close()


async def test_a_miss_is_stored_and_the_next_request_is_a_hit(
    base: str, origin: OriginServer
) -> None:
    origin.route("/a", headers={"Cache-Control": "max-age=60"}, body=b"hello")
    async with aiohttp.ClientSession(headers={"Host": HOST}) as client:
        async with client.get(base + "/a") as first:
            assert (first.status, await first.read()) == (200, b"hello")
            assert first.headers["Cache-Status"] == "edge-t; fwd=uri-miss; stored"
        async with client.get(base + "/a") as second:
            assert (second.status, await second.read()) == (200, b"hello")
            assert second.headers["Cache-Status"].startswith("edge-t; hit; ttl=")
        async with client.head(base + "/a") as head:
            assert head.status == 200 and head.headers["Content-Length"] == "5"
    assert origin.count("/a") == 1


async def test_a_request_body_is_streamed_upstream_on_a_pass(
    base: str, origin: OriginServer
) -> None:
    origin.route("/form", headers={"Cache-Control": "no-store"}, body=b"taken")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a=1"
        yield b"&b=2"

    async with (
        aiohttp.ClientSession(headers={"Host": HOST}) as client,
        client.post(base + "/form", data=chunks()) as response,
    ):
        assert (response.status, await response.read()) == (200, b"taken")
        assert response.headers["Cache-Status"] == "edge-t; fwd=request; fwd-status=200"
    assert origin.count("/form") == 1


async def test_a_refusal_is_the_nodes_own_and_reaches_no_origin(
    base: str, origin: OriginServer
) -> None:
    async with (
        aiohttp.ClientSession(headers={"Host": "other.example.net"}) as client,
        client.get(base + "/a") as response,
    ):
        assert response.status == 421
        assert response.headers["Cache-Status"] == "edge-t; detail=host-not-served"
        assert "X-Edgeshield-Error" not in response.headers
    assert origin.count("/a") == 0


async def test_a_clock_stepping_back_never_makes_a_hot_hit_younger(
    base: str, origin: OriginServer, clock: Clock
) -> None:
    # RFC 9111 4.2.3: apparent and resident times are never negative; the fast lane
    # once subtracted without that clamp, answering "Age: -10" and a ttl past the
    # object's lifetime
    origin.route("/t", headers={"Cache-Control": "max-age=600"}, body=b"tick")
    async with aiohttp.ClientSession(headers={"Host": HOST}) as client:
        async with client.get(base + "/t") as miss:
            assert await miss.read() == b"tick"
            assert "fwd=uri-miss" in miss.headers["Cache-Status"]
        async with client.get(base + "/t") as hit:
            assert await hit.read() == b"tick"
            assert hit.headers["Cache-Status"] == "edge-t; hit; ttl=600"
        clock.now -= 10
        async with client.get(base + "/t") as earlier:
            assert await earlier.read() == b"tick"
            assert earlier.headers["Age"] == "0"
            assert earlier.headers["Cache-Status"] == "edge-t; hit; ttl=600"
