"""Metrics that add up: a node's /metrics is the sum over its worker processes.

A 2-worker edge is sent a known number of requests, each on a new connection (the
kernel spreads them over both workers by SO_REUSEPORT); its /metrics reads back
exactly that number, by outcome, by service and status class, in the latency
histogram, and in bytes sent; the store's byte count is the shared one.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.fleet_runner import get
from tests.support.metrics_text import metric_value
from tests.support.origin import OriginServer, running_origin
from tests.support.purge_fleet import NODE_AUTH, PurgeFleet, running_purge_fleet
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

EDGE = "edge1"
REQUESTS = 60
BODY = b"counted once per request\n" * 8


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    """The fleet's origin."""
    yield from running_origin()


@pytest.fixture(scope="module")
def fleet(origin: OriginServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PurgeFleet]:
    """The purge API, one shield, and one edge with two worker processes."""
    yield from running_purge_fleet(
        tmp_path_factory.mktemp("metrics"), [origin.url], edges=1, shields=1, workers={EDGE: 2}
    )


async def scrape(admin_url: str) -> str:
    """A node's admin /metrics text."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(admin_url + "/metrics", headers=NODE_AUTH) as response,
    ):
        assert response.status == 200
        return await response.text()


async def test_a_two_worker_edge_counts_every_request_once(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    origin.route(
        "/counted",
        headers={"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"},
        body=BODY,
    )
    admin = fleet.config(EDGE).admin_url

    async def both_live() -> bool:
        return metric_value(await scrape(admin), "edgeshield_workers_live") == 2

    await eventually(both_live, "both workers of the edge live")
    before = await scrape(admin)
    assert metric_value(before, "edgeshield_requests_total", outcome="hit") == 0
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as fresh:
        replies = [await get(fresh, fleet.url(EDGE), "/counted") for _ in range(REQUESTS)]
    assert [r.status for r in replies] == [200] * REQUESTS
    text = await scrape(admin)
    hits = metric_value(text, "edgeshield_requests_total", outcome="hit")
    misses = metric_value(text, "edgeshield_requests_total", outcome="miss")
    # each worker has its own memory tier but one disk store: at most one miss each
    assert hits + misses == REQUESTS, text
    assert 1 <= misses <= 2
    assert (
        metric_value(text, "edgeshield_responses_total", service="site", status_class="2xx")
        == REQUESTS
    )
    assert metric_value(text, "edgeshield_request_seconds_count", outcome="hit") == hits
    assert metric_value(text, "edgeshield_body_bytes_sent_total") == REQUESTS * len(BODY)
    assert metric_value(text, "edgeshield_hit_ratio") == pytest.approx(hits / REQUESTS)
    assert metric_value(text, "edgeshield_store_bytes") >= len(BODY)
    # a worker that did not fetch the object read it from the shared store: a disk
    # hit (and again whenever its memory tier stopped trusting its copy)
    assert "\nedgeshield_disk_hits_total{" in text
    assert 2 - misses <= metric_value(text, "edgeshield_disk_hits_total") <= hits
    assert "\nedgeshield_durable_commits_total{" in text
    assert metric_value(text, "edgeshield_durable_commits_total") == 0


async def test_answers_to_hosts_not_served_are_counted_apart(fleet: PurgeFleet) -> None:
    admin = fleet.config(EDGE).admin_url
    before = metric_value(
        await scrape(admin), "edgeshield_responses_total", service="-", status_class="4xx"
    )
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as fresh:
        for _ in range(10):
            reply = await get(fresh, fleet.url(EDGE), "/x", host="elsewhere.test")
            assert reply.status == 421
    text = await scrape(admin)
    assert (
        metric_value(text, "edgeshield_responses_total", service="-", status_class="4xx")
        == before + 10
    )
    assert "elsewhere" not in text
