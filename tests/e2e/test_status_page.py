"""The fleet's status page and the purge API's and GeoDNS's /metrics, against a
running fleet of real processes (purge API, a shield, two edges, GeoDNS).

The browser test loads /status in Debian's chromium, driven by Playwright against
the system browser (no browser download): the page shows every node, and a purge
made while it is open appears, refreshed by the page's own script, with every node's
acknowledgement. Set EDGESHIELD_STATUS_SCREENSHOT=PATH to keep its screenshot (the
one in docs/operations.md was made so).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dnslib import EDNS0, DNSRecord, EDNSOption
from playwright.async_api import async_playwright

from fleet.config import load_fleet, split_host_port
from geo.choice import Location
from geo.mmdb_build import write_mmdb
from tests.support.fleet_runner import get
from tests.support.metrics_text import metric_value
from tests.support.origin import OriginServer, running_origin
from tests.support.ports import free_port
from tests.support.processes import NodeProcess
from tests.support.purge_fleet import NODE_AUTH, PurgeFleet
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    """The fleet's origin."""
    yield from running_origin()


@pytest.fixture(scope="module")
def fleet(origin: OriginServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PurgeFleet]:
    """The purge API, one shield, two edges and GeoDNS, as real processes."""
    started: list[NodeProcess] = []
    root = tmp_path_factory.mktemp("status")
    fleet = PurgeFleet(root, [origin.url], started, edges=2, shields=1)
    mmdb = root / "geo.mmdb"
    write_mmdb([("10.1.0.0/16", Location(50.1, 8.7)), ("10.2.0.0/16", Location(40.7, -74.0))], mmdb)
    dns, http = free_port(), free_port()
    fleet.path.write_text(
        fleet.path.read_text()
        + f'\n[geo]\ndns_listen = "127.0.0.1:{dns}"\nhttp_listen = "127.0.0.1:{http}"\n'
        f'zone = "cdn.test"\nmmdb = "{mmdb}"\n'
    )
    fleet.fleet = load_fleet(fleet.path)
    try:
        fleet.start()
        geo = NodeProcess(["geo", "serve", "--config", str(fleet.path)], root / "logs" / "geo.log")
        started.append(geo.start())
        geo.wait_listening(f"127.0.0.1:{http}")
        yield fleet
    finally:
        fleet.stop()


async def status_json(fleet: PurgeFleet) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(fleet.api_url + "/status.json") as response,
    ):
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


async def every_node_ok(fleet: PurgeFleet) -> bool:
    nodes = (await status_json(fleet))["nodes"]
    return sorted(n["name"] for n in nodes if n["health"] == "ok") == sorted(fleet.node_names)


def dns_query(fleet: PurgeFleet, subnet: str) -> None:
    """One A query for the service's name from a client in `subnet` (ECS)."""
    assert fleet.fleet.geo is not None
    host, port = split_host_port(fleet.fleet.geo.dns_listen)
    query = DNSRecord.question("site.cdn.test", "A")
    network, prefix = subnet.split("/")
    payload = bytes([0, 1, int(prefix), 0, *map(int, network.split(".")[:3])])
    query.add_ar(EDNS0(opts=[EDNSOption(8, payload)]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query.pack(), (host, port))
        sock.recv(4096)


async def test_status_json_shows_every_node_with_role_region_and_version(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    origin.route("/status/a", headers={"Cache-Control": "max-age=300"}, body=b"a" * 1000)
    await eventually(lambda: every_node_ok(fleet), "every node ok on /status.json", timeout=30)
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            assert (await get(session, fleet.url("edge1"), "/status/a")).status == 200

    async def counted() -> bool:
        edge = next(n for n in (await status_json(fleet))["nodes"] if n["name"] == "edge1")
        return bool(edge["hit_ratio"] == 0.75 and edge["bytes_served"] >= 4000)

    await eventually(counted, "edge1's hits on /status.json", timeout=30)
    nodes = {n["name"]: n for n in (await status_json(fleet))["nodes"]}
    assert nodes["shield1"]["role"] == "shield" and nodes["edge2"]["role"] == "edge"
    # the page reads whole without its script: rendered on the server
    async with aiohttp.ClientSession() as session, session.get(fleet.api_url + "/status") as page:
        assert page.status == 200 and page.content_type == "text/html"
        text = await page.text()
    for name in fleet.node_names:
        assert f'<tr data-node="{name}" class="ok">' in text
    assert nodes["edge2"]["region"] == "us"
    assert all(n["version"] for n in nodes.values())


async def test_geo_metrics_count_answers_by_region_and_show_on_the_status_page(
    fleet: PurgeFleet,
) -> None:
    for _ in range(3):
        dns_query(fleet, "10.1.0.0/24")
    dns_query(fleet, "10.2.0.0/24")
    assert fleet.fleet.geo is not None
    url = f"http://{fleet.fleet.geo.http_listen}/metrics"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as refused:
            assert refused.status == 401
        async with session.get(url, headers=NODE_AUTH) as response:
            text = await response.text()
    assert metric_value(text, "edgeshield_dns_answers_total", qtype="A", region="eu") == 3
    assert metric_value(text, "edgeshield_dns_answers_total", rcode="NOERROR", region="us") == 1

    async def on_page() -> bool:
        geo = (await status_json(fleet))["geo"]
        return bool(geo["answers_by_region"].get("eu", 0) >= 3)

    await eventually(on_page, "DNS answers on /status.json", timeout=30)


async def test_purge_api_metrics_show_purges_by_state_and_lag_per_node(
    fleet: PurgeFleet,
) -> None:
    async with aiohttp.ClientSession() as session:
        code, answer = await fleet.purge(session, {"urls": ["/status/metrics"]})
        assert code == 200 and answer["status"] == "complete"
        async with session.get(fleet.api_url + "/metrics") as refused:
            assert refused.status == 401
        async with session.get(fleet.api_url + "/metrics", headers=NODE_AUTH) as response:
            text = await response.text()
    head = metric_value(text, "edgeshield_purges_accepted_total")
    assert head >= 1
    assert metric_value(text, "edgeshield_purges", state="pending") == 0
    assert metric_value(text, "edgeshield_purges", state="complete") == head
    for name in fleet.node_names:
        assert metric_value(text, "edgeshield_purge_acks_total", node=name) == head
        assert metric_value(text, "edgeshield_purge_lag", node=name) == 0
        assert metric_value(text, "edgeshield_purge_lag_seconds", node=name) == 0
    assert metric_value(text, "edgeshield_purge_log_bytes") > 0


async def test_the_status_page_in_a_browser_shows_every_node_and_a_purge_propagating(
    fleet: PurgeFleet,
) -> None:
    await eventually(lambda: every_node_ok(fleet), "every node ok", timeout=30)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 800})
            await page.goto(fleet.api_url + "/status")
            for name in fleet.node_names:
                row = page.locator(f'#nodes tr[data-node="{name}"]')
                await row.wait_for()
                assert "ok" in await row.inner_text()
            async with aiohttp.ClientSession() as session:
                code, answer = await fleet.purge(session, {"tags": ["status-page"]})
            assert code == 200, answer
            # the page's own script brings the purge in, with every node's ack
            purge = page.locator(f'#purges tr[data-purge="{answer["id"]}"]')
            await purge.wait_for(timeout=15000)
            text = await purge.inner_text()
            assert "complete in" in text
            for name in fleet.node_names:
                assert f"{name}:" in text and f"{name}:…" not in text
            shot = os.environ.get("EDGESHIELD_STATUS_SCREENSHOT")
            await page.screenshot(path=shot or str(fleet.root / "status.png"), full_page=True)
            assert Path(shot or fleet.root / "status.png").stat().st_size > 1000
        finally:
            await browser.close()
