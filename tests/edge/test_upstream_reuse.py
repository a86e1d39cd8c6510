"""Misses reuse upstream connections: many fetches in a row, and many at once, open
only as many connections to the origin as are in use at the same time."""

from __future__ import annotations

import asyncio

from aiohttp import web
from multidict import CIMultiDict

from edge.upstream import OriginPool, make_session
from fleet.config import Service


async def counting_origin() -> tuple[web.AppRunner, str, set[tuple[str, int]]]:
    """A real origin on 127.0.0.1 that records the client address of every request."""
    peers: set[tuple[str, int]] = set()

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername")[:2])
        return web.Response(body=b"x" * 1024, headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}", peers


async def test_misses_in_a_row_use_one_connection() -> None:
    runner, url, peers = await counting_origin()
    session = make_session()
    pool = OriginPool(Service(name="s", hosts=("www.example.com",), origins=(url,)), session)
    try:
        for n in range(100):
            response = await pool.request(
                "GET", f"/o?u={n}", CIMultiDict({"Host": "www.example.com"}), None
            )
            body = b"".join([chunk async for chunk in response.iter_chunks()])
            response.release()
            assert response.status == 200 and len(body) == 1024
        assert len(peers) == 1, peers
    finally:
        await pool.stop()
        await session.close()
        await runner.cleanup()


async def test_concurrent_misses_open_no_more_connections_than_in_flight() -> None:
    runner, url, peers = await counting_origin()
    session = make_session()
    pool = OriginPool(Service(name="s", hosts=("www.example.com",), origins=(url,)), session)

    async def fetch(n: int) -> None:
        response = await pool.request(
            "GET", f"/o?u={n}", CIMultiDict({"Host": "www.example.com"}), None
        )
        async for _chunk in response.iter_chunks():
            pass
        response.release()

    try:
        for wave in range(10):  # 10 waves of 8 at once: 80 fetches
            await asyncio.gather(*(fetch(wave * 8 + n) for n in range(8)))
        assert len(peers) <= 8, len(peers)
    finally:
        await pool.stop()
        await session.close()
        await runner.cleanup()
