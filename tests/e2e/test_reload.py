"""Reload on SIGHUP, end to end: a 2-worker edge re-reads fleet.toml under load.

A host added to the service is served by every worker after the reload, and a load
run across the reload sees no error; a change to `listen` is refused with a message
naming the key, and the node keeps running on the file it had; so does a file that
no longer loads. A traffic rule added by a reload applies in every worker, to objects
already held too, with no failed request meanwhile.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.fleet_runner import get
from tests.support.metrics_text import metric_value
from tests.support.origin import OriginServer, running_origin
from tests.support.ports import free_port
from tests.support.purge_fleet import NODE_AUTH, PurgeFleet, running_purge_fleet
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

EDGE = "edge1"
NEW_HOST = "new.example.com"


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    """The fleet's origin."""
    yield from running_origin()


@pytest.fixture(scope="module")
def fleet(origin: OriginServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PurgeFleet]:
    """The purge API and one edge with two worker processes (no shield: the edge
    talks to the origin itself)."""
    yield from running_purge_fleet(
        tmp_path_factory.mktemp("reload"), [origin.url], edges=1, shields=0, workers={EDGE: 2}
    )


async def reloads(admin_url: str) -> float:
    """The node's count of applied reloads (and that both workers are live)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(admin_url + "/metrics", headers=NODE_AUTH) as response,
    ):
        text = await response.text()
    if metric_value(text, "edgeshield_workers_live") != 2:
        return -1.0
    return metric_value(text, "edgeshield_reloads_total")


async def load_run(url: str, stop: asyncio.Event, statuses: list[int]) -> None:
    """GETs on fresh connections until `stop`; every status (or 0 for an error)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as fresh:
        while not stop.is_set():
            try:
                statuses.append((await get(fresh, url, "/reloaded")).status)
            except (aiohttp.ClientError, OSError):
                statuses.append(0)


def hangup(fleet: PurgeFleet) -> None:
    """SIGHUP to the edge's worker 0 (as `kill -HUP` would)."""
    proc = fleet.nodes[EDGE].proc
    assert proc is not None and proc.poll() is None
    proc.send_signal(signal.SIGHUP)


async def test_a_host_added_by_reload_is_served_and_no_request_fails_meanwhile(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    origin.route("/reloaded", headers={"Cache-Control": "max-age=300"}, body=b"ok\n")
    admin = fleet.config(EDGE).admin_url
    await eventually(lambda: _is(reloads(admin), 0.0), "both workers live")
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as fresh:
        before = await get(fresh, fleet.url(EDGE), "/reloaded", host=NEW_HOST)
        assert before.status == 421
    stop, statuses = asyncio.Event(), []
    load = [asyncio.create_task(load_run(fleet.url(EDGE), stop, statuses)) for _ in range(4)]
    await eventually(lambda: len(statuses) >= 20, "the load run under way")
    text = fleet.path.read_text()
    fleet.path.write_text(
        text.replace('hosts = ["www.example.com"]', f'hosts = ["www.example.com", "{NEW_HOST}"]')
    )
    hangup(fleet)
    await eventually(lambda: _is(reloads(admin), 1.0), "the reload applied")
    seen = len(statuses)
    await eventually(lambda: len(statuses) >= seen + 20, "the load run after the reload")
    stop.set()
    await asyncio.gather(*load)
    assert set(statuses) == {200}, f"{statuses.count(0)} errors of {len(statuses)}"
    # every worker serves the new host (fresh connections spread over both)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        for _ in range(20):
            assert (await get(fresh, fleet.url(EDGE), "/reloaded", host=NEW_HOST)).status == 200
    assert fleet.nodes[EDGE].proc is not None and fleet.nodes[EDGE].proc.poll() is None


async def test_a_changed_listen_address_is_refused_naming_the_key(fleet: PurgeFleet) -> None:
    admin = fleet.config(EDGE).admin_url
    applied = await reloads(admin)
    listen = fleet.config(EDGE).listen
    text = fleet.path.read_text()
    fleet.path.write_text(text.replace(listen, f"127.0.0.1:{free_port()}"))
    try:
        hangup(fleet)
        await eventually(
            lambda: (
                "reload refused" in fleet.nodes[EDGE].log()
                and f"{EDGE}: listen changed" in fleet.nodes[EDGE].log()
            ),
            "the refusal in the log",
        )
        fleet.path.write_text("this is [not toml")
        hangup(fleet)
        await eventually(
            lambda: "the file does not load" in fleet.nodes[EDGE].log(), "the second refusal"
        )
    finally:
        fleet.path.write_text(text)
    assert await reloads(admin) == applied
    async with aiohttp.ClientSession() as session:
        assert (await get(session, fleet.url(EDGE), "/reloaded")).status == 200


async def _is(value: object, expected: float) -> bool:
    assert asyncio.iscoroutine(value)
    return bool(await value == expected)


async def test_a_rule_added_by_reload_applies_and_no_request_fails_meanwhile(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    origin.route("/reloaded", headers={"Cache-Control": "max-age=300"}, body=b"ok\n")
    origin.route("/closed/door", headers={"Cache-Control": "max-age=300"}, body=b"open\n")
    admin = fleet.config(EDGE).admin_url
    await eventually(lambda: _at_least(reloads(admin), 0.0), "both workers live")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        assert (await get(fresh, fleet.url(EDGE), "/closed/door")).body == b"open\n"
    applied = await reloads(admin)
    stop, statuses = asyncio.Event(), []
    load = [asyncio.create_task(load_run(fleet.url(EDGE), stop, statuses)) for _ in range(4)]
    await eventually(lambda: len(statuses) >= 20, "the load run under way")
    text = fleet.path.read_text()
    rule = (
        '\n[[services.rules]]\nmatch = { path_prefix = "/closed/" }\n'
        'respond = { status = 403, body = "closed by rule" }\n'
    )
    fleet.path.write_text(text + rule)
    try:
        hangup(fleet)
        await eventually(lambda: _is(reloads(admin), applied + 1), "the reload applied")
        seen = len(statuses)
        await eventually(lambda: len(statuses) >= seen + 20, "the load run after the reload")
        stop.set()
        await asyncio.gather(*load)
        assert set(statuses) == {200}, f"{statuses.count(0)} errors of {len(statuses)}"
        # every worker applies the rule, even to an object it holds (fresh connections)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            for _ in range(10):
                answer = await get(fresh, fleet.url(EDGE), "/closed/door")
                assert (answer.status, answer.body) == (403, b"closed by rule"), answer
    finally:
        fleet.path.write_text(text)
        hangup(fleet)
        await eventually(lambda: _is(reloads(admin), applied + 2), "the rule removed again")


async def _at_least(value: object, least: float) -> bool:
    assert asyncio.iscoroutine(value)
    return bool(await value >= least)
