"""Invalidation after an unsafe method reaches every worker process of a node.

A real edge with two worker processes on one port (SO_REUSEPORT: the kernel picks
the worker of each connection). After the edge answers 200 to a POST, no GET on any
new connection, whichever worker takes it, may be answered from that worker's copy
of the object stored before the POST (RFC 9111 4.4).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.processes import NodeProcess
from tests.support.purge_fleet import PurgeFleet
from tests.support.raw_client import (
    EchoOrigin,
    RawResponse,
    parse_response,
    raw_exchange,
    raw_request,
)

pytestmark = pytest.mark.timeout(90)

EDGE = "edge1"
HOST = "www.example.com"
CACHEABLE = {"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def origin() -> Iterator[EchoOrigin]:
    """The echoing origin: each answer says how many requests for its path came before."""
    server = EchoOrigin().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fleet(origin: EchoOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PurgeFleet]:
    """The purge API and one edge with two worker processes, straight to the origin."""
    started: list[NodeProcess] = []
    fleet = PurgeFleet(
        tmp_path_factory.mktemp("worker-invalidation"),
        [origin.url],
        started,
        edges=1,
        shields=0,
        workers={EDGE: 2},
    )
    try:
        fleet.start()
        asyncio.run(both_workers_live(fleet))
        yield fleet
    finally:
        fleet.stop()


async def both_workers_live(fleet: PurgeFleet, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            status, body = await fleet.healthz(session, EDGE)
            if status == 200 and body.get("status") == "ok":
                return
            assert time.monotonic() < deadline, (status, body, fleet.logs())
            await asyncio.sleep(0.05)


def served_n(response: RawResponse) -> int:
    """Which origin request for the path the answer was made from (1, 2, ...)."""
    data = json.loads(response.body)
    assert isinstance(data, dict)
    return int(data["n"])


async def test_after_a_200_to_a_post_no_worker_serves_the_old_object(
    fleet: PurgeFleet, origin: EchoOrigin
) -> None:
    path = "/inv/workers"
    origin.routes[path] = CACHEABLE
    address = fleet.config(EDGE).listen
    get = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    post = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\nok".encode()

    async def fresh_get() -> RawResponse:
        return parse_response(await raw_exchange(address, get))

    hits = 0
    for round_ in range(25):
        # every worker holds the object: on new connections the kernel spreads them
        warm = [await fresh_get() for _ in range(8)]
        hits += sum("hit" in r.headers["Cache-Status"] for r in warm)
        answer = parse_response(await raw_request(address, post))
        assert answer.status == 200
        posted = served_n(answer)
        # a keep-alive client has the answer once its last byte is in, and asks again
        after = await asyncio.gather(*(fresh_get() for _ in range(8)))
        stale = [(served_n(r), r.headers["Cache-Status"]) for r in after if served_n(r) < posted]
        assert not stale, (round_, posted, stale)
    assert hits >= 100  # the object was cached in the workers before each POST
