"""An origin group none of whose origins can be reached is passed over by the request
that found it so: an idempotent request goes on to the group the health-aware choice
picks without it, as the next health check or the circuit would have it do. What an
edge falling back to its origins relies on, since it runs no health checks of its own
(a canary whose origin was down answered a tenth of such requests with a 502).

A real origin on 127.0.0.1 for the main group; the canary's is a port nothing listens
on. The pool's health checks are not started, as on an edge."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from multidict import CIMultiDict

from edge.upstream import OriginPool, UpstreamError, make_session
from fleet.config import Service
from fleet.rules import OriginGroup, TrafficRules

HEADERS = {"Host": "www.example.com"}


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def main_origin() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"main")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def split_service(main: str, canary: str) -> Service:
    """Most of the traffic to the canary group, so that nearly every request tries it."""
    groups = (
        OriginGroup("main", (main,), weight=1),
        OriginGroup("canary", (canary,), weight=99),
    )
    return Service(
        name="s",
        hosts=("www.example.com",),
        origins=(main,),
        traffic=TrafficRules(origin_groups=groups),
    )


async def test_a_request_passes_over_a_group_it_cannot_reach(main_origin: str) -> None:
    canary = f"http://127.0.0.1:{closed_port()}"
    async with make_session() as session:
        pool = OriginPool(split_service(main_origin, canary), session)
        bodies = []
        for n in range(20):
            response = await pool.request("GET", f"/x?n={n}", CIMultiDict(HEADERS), None)
            bodies.append(b"".join([chunk async for chunk in response.iter_chunks()]))
            response.release()
        assert bodies == [b"main"] * 20
        (canary_state,) = [o for o in pool.origins if o.url == canary]
        assert canary_state.consecutive_failures >= 1  # it was tried, and passed over
        await pool.stop()


async def test_a_request_with_a_body_is_not_sent_to_another_group(main_origin: str) -> None:
    canary = f"http://127.0.0.1:{closed_port()}"

    async def body() -> AsyncIterator[bytes]:
        yield b"payload"

    async with make_session() as session:
        pool = OriginPool(split_service(main_origin, canary), session)
        outcomes = []
        for _ in range(10):
            try:
                response = await pool.request("POST", "/form", CIMultiDict(HEADERS), body())
            except UpstreamError as exc:
                outcomes.append(exc.status)
            else:
                outcomes.append(response.status)
                response.release()
        # a request that is not retried anywhere else is not retried in another group
        assert 502 in outcomes
        await pool.stop()
