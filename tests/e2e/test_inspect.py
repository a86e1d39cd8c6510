"""Cache inspection: `GET /v1/cache?url=` on a node's admin port and `edgeshield
inspect URL --config fleet.toml`, against real processes (a shield and an edge)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.fleet_runner import get
from tests.support.fleetfile import TEST_NODE_SECRET
from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.purge_fleet import NODE_AUTH, PurgeFleet

pytestmark = pytest.mark.timeout(90)

URL = "http://www.example.com/inspected?b=2&a=1"


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    """The fleet's origin."""
    yield from running_origin()


@pytest.fixture(scope="module")
def fleet(origin: OriginServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PurgeFleet]:
    """The purge API, one shield and one edge."""
    started: list[NodeProcess] = []
    fleet = PurgeFleet(
        tmp_path_factory.mktemp("inspect"), [origin.url], started, edges=1, shields=1
    )
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


async def inspect(fleet: PurgeFleet, node: str, url: str, **query: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            fleet.config(node).admin_url + "/v1/cache",
            params={"url": url, **query},
            headers=NODE_AUTH,
        ) as response,
    ):
        return response.status, await response.json()


async def test_a_node_says_what_it_holds_for_a_url(fleet: PurgeFleet, origin: OriginServer) -> None:
    origin.route(
        "/inspected?a=1&b=2",
        headers={"Cache-Control": "max-age=300", "Surrogate-Key": "page-1", "ETag": '"v1"'},
        body=b"x" * 5000,
    )
    status, before = await inspect(fleet, "edge1", URL)
    assert status == 200 and before["cached"] is False
    async with aiohttp.ClientSession() as session:
        reply = await get(session, fleet.url("edge1"), "/inspected?b=2&a=1")
        assert reply.status == 200
    status, held = await inspect(fleet, "edge1", URL, verify="1")
    assert status == 200 and held["cached"] is True and held["service"] == "site"
    [variant] = held["variants"]
    assert variant["size"]["identity"] == 5000
    assert variant["etag"] == '"v1"'
    assert 290 < variant["ttl"] <= 300 and variant["fresh"] is True
    assert variant["checksum"]["identity"] == "ok"
    assert variant["surrogate_keys"] == ["page-1"]
    assert variant["purge"] == "none"
    async with aiohttp.ClientSession() as session:
        code, answer = await fleet.purge(session, {"tags": ["page-1"], "soft": True})
    assert code == 200, answer
    _, after = await inspect(fleet, "shield1", URL)
    assert after["variants"][0]["purge"].startswith("stale (a soft purge covers it")


async def test_bad_inspection_requests_get_short_4xx(fleet: PurgeFleet) -> None:
    status, answer = await inspect(fleet, "edge1", "not a url " + "x" * 100)
    assert status == 400 and "x" * 50 not in answer["error"]
    status, _ = await inspect(fleet, "edge1", "http://elsewhere.test/")
    assert status == 404
    async with (
        aiohttp.ClientSession() as session,
        session.get(fleet.config("edge1").admin_url + "/v1/cache?url=" + URL) as response,
    ):
        assert response.status == 401


def test_edgeshield_inspect_asks_every_node(fleet: PurgeFleet) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "inspect", URL, "--config", str(fleet.path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EDGESHIELD_NODE_SECRET": TEST_NODE_SECRET},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "shield1: 1 variant(s)"
    assert any(line.startswith("edge1: 1 variant(s)") for line in lines)
    assert 'etag "v1" bytes identity=5000 checksum identity:recorded' in done.stdout
