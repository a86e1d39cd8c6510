"""Purges end to end: the purge API, 2 shields and 3 edges as real processes.

One fleet serves every test of this module (each test uses its own paths): a real
counting origin, the purge API, two shields and three edges, the third edge running
two worker processes on one port. Each test warms objects through every edge,
changes them at the origin, purges through the API (or the `edgeshield purge` CLI)
and then asks every edge again, asserting what the clients got and what the origin
saw: by URL, prefix, surrogate key and everything, hard and soft; a fill that was in
flight while the purge was applied; an edge that was down during the purge; the API
killed right after accepting a purge; a purge reaching both workers of one edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import aiohttp
import pytest

from tests.support.fleet_runner import HOST, Reply, client_session, get
from tests.support.fleetfile import TEST_TOKEN
from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.purge_fleet import PurgeFleet, propagation_ms
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

#: The edge that runs two worker processes (SO_REUSEPORT).
WORKERS_EDGE = "edge3"


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    """A started origin that counts requests, shared by the module."""
    yield from running_origin()


@pytest.fixture(scope="module")
def fleet(origin: OriginServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PurgeFleet]:
    """The purge API, 2 shields and 3 edges (edge3 with 2 workers), all stopped after."""
    started: list[NodeProcess] = []
    fleet = PurgeFleet(
        tmp_path_factory.mktemp("purge-fleet"),
        [origin.url],
        started,
        workers={WORKERS_EDGE: 2},
    )
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


# -- helpers ----------------------------------------------------------------------------
def body_of(path: str, version: int) -> bytes:
    """What the origin answers for `path` at `version`."""
    return f"{path} version {version}\n".encode()


def etag_of(path: str, version: int) -> str:
    """The origin's ETag for `path` at `version`."""
    return f'"{path}-v{version}"'


def publish(
    origin: OriginServer,
    path: str,
    version: int,
    *,
    tags: Sequence[str] = (),
    swr: bool = False,
    delay: float = 0.0,
) -> bytes:
    """Make the origin answer `path` with its `version` (cacheable for 300 s); the body."""
    cache_control = "max-age=300" + (", stale-while-revalidate=60" if swr else "")
    headers = {"Cache-Control": cache_control, "Content-Type": "application/octet-stream"}
    if tags:
        headers["Surrogate-Key"] = " ".join(tags)
    body = body_of(path, version)
    origin.route(path, headers=headers, body=body, etag=etag_of(path, version), delay=delay)
    return body


def conditionals(origin: OriginServer, etag: str) -> int:
    """How many requests the origin saw with `If-None-Match: etag` (a revalidation)."""
    return sum(
        1
        for headers in origin.seen_headers
        if any(k.lower() == "if-none-match" and v == etag for k, v in headers.items())
    )


async def through_every_edge(
    session: aiohttp.ClientSession, fleet: PurgeFleet, path: str
) -> dict[str, Reply]:
    """GET `path` through each edge in turn."""
    return {edge: await get(session, fleet.url(edge), path) for edge in fleet.edge_names}


async def warm(
    session: aiohttp.ClientSession, fleet: PurgeFleet, origin: OriginServer, path: str
) -> None:
    """Fetch `path` through every edge, so each edge (and its shield) holds it."""
    replies = await through_every_edge(session, fleet, path)
    assert {edge: r.body for edge, r in replies.items()} == {
        edge: body_of(path, 1) for edge in fleet.edge_names
    }, fleet.logs()
    assert origin.count(path) == 1


def assert_complete(status: dict[str, Any], fleet: PurgeFleet) -> None:
    """The purge status says every node (shields included) acknowledged it."""
    assert status["status"] == "complete", status
    assert status["acked"] == status["total"] == len(fleet.node_names) == 5, status
    assert set(status["nodes"]) == set(fleet.node_names), status
    assert all(isinstance(ms, int | float) and ms >= 0 for ms in status["nodes"].values()), status
    assert status["pending"] == [], status
    assert isinstance(status["propagation_ms"], int | float), status
    assert status["propagation_ms"] == max(status["nodes"].values()), status


async def purged(
    session: aiohttp.ClientSession, fleet: PurgeFleet, body: dict[str, object]
) -> dict[str, Any]:
    """Purge with `?wait=10`: the API must answer 200 complete, acked by all 5 nodes."""
    code, status = await fleet.purge(session, body, wait=10)
    assert code == 200, (code, status, fleet.logs())
    assert_complete(status, fleet)
    return status


# -- by URL, prefix, surrogate key and everything; hard and soft -------------------------
Objects = list[tuple[str, tuple[str, ...]]]  # (path, surrogate keys)
Case = tuple[dict[str, object], Objects, Objects]


def case_for(kind: str, name: str) -> Case:
    """(purge body, covered (path, tags), not covered (path, tags)) for one kind."""
    base = f"/{name}"
    if kind == "url":
        # one absolute URL (that host only) and one path (every host of the service)
        return (
            {"urls": [f"https://{HOST}{base}/page", f"{base}/second"]},
            [(f"{base}/page", ()), (f"{base}/second", ())],
            [(f"{base}/page/below", ()), (f"{base}/pag", ())],
        )
    if kind == "prefix":
        return (
            {"prefixes": [f"{base}/dir/"]},
            [(f"{base}/dir/a", ()), (f"{base}/dir/sub/b", ())],
            [(f"{base}/dirx", ()), (f"{base}/other", ())],
        )
    if kind == "tag":
        return (
            {"tags": [f"{name}-news"]},
            [(f"{base}/a", (f"{name}-news", f"{name}-misc")), (f"{base}/b", (f"{name}-news",))],
            [(f"{base}/c", (f"{name}-sport",))],
        )
    assert kind == "all"
    return ({"all": True}, [(f"{base}/a", ()), (f"{base}/b", ())], [])


async def fetch_until_new(session: aiohttp.ClientSession, base_url: str, path: str) -> list[Reply]:
    """Ask one edge for a soft-purged, stale-while-revalidate object until it is new.

    Every answer before the new body must be the old body marked stale by the edge.
    """
    old, new = body_of(path, 1), body_of(path, 2)
    replies: list[Reply] = []

    async def renewed() -> bool:
        reply = await get(session, base_url, path)
        replies.append(reply)
        if reply.body == new:
            return True
        assert reply.body == old, reply
        assert "stale" in reply.cache_status[-1], reply.cache_status
        return False

    await eventually(renewed, f"{path} to be renewed through {base_url}", 10, 0.1)
    return replies


@pytest.mark.parametrize("mode", ["hard", "soft", "soft-swr"])
@pytest.mark.parametrize("kind", ["url", "prefix", "tag", "all"])
async def test_purge_reaches_every_edge(
    kind: str, mode: str, fleet: PurgeFleet, origin: OriginServer
) -> None:
    name = f"{kind}-{mode}"
    body, covered, uncovered = case_for(kind, name)
    swr = mode == "soft-swr"
    soft = mode != "hard"
    for path, tags in covered + uncovered:
        publish(origin, path, 1, tags=tags, swr=swr)
    async with client_session() as session:
        for path, _ in covered + uncovered:
            await warm(session, fleet, origin, path)
        for path, tags in covered + uncovered:
            publish(origin, path, 2, tags=tags, swr=swr)

        status = await purged(session, fleet, {**body, "soft": soft})

        # GET /v1/purges/{id} tells the same, with each node's ack and match count
        again = await fleet.status(session, status["id"])
        assert_complete(again, fleet)
        assert again["request"]["soft"] is soft
        for edge in fleet.edge_names:
            ack = again["acks"][edge]
            assert ack["acked_at"] >= again["accepted_at"]
            assert ack["matched"] is None or ack["matched"] >= len(covered), again["acks"]

        # what the purge does not cover stays cached, old body and all
        for path, _ in uncovered:
            replies = await through_every_edge(session, fleet, path)
            assert [r.body for r in replies.values()] == [body_of(path, 1)] * 3
            assert origin.count(path) == 1

        for path, _ in covered:
            if mode == "hard":
                # a miss on every edge; the shield refills once, the other edges hit it
                replies = await through_every_edge(session, fleet, path)
                assert [r.body for r in replies.values()] == [body_of(path, 2)] * 3, replies
                assert origin.count(path) == 2
            elif mode == "soft":
                # without stale-while-revalidate the first request revalidates
                replies = await through_every_edge(session, fleet, path)
                assert [r.body for r in replies.values()] == [body_of(path, 2)] * 3, replies
                assert "fwd=stale" in replies["edge1"].cache_status[-1], replies["edge1"]
                assert conditionals(origin, etag_of(path, 1)) == 1
                assert origin.count(path) == 2
            else:
                # stale-while-revalidate: old (marked stale) until revalidated, then new
                for edge in fleet.edge_names:
                    await fetch_until_new(session, fleet.url(edge), path)
                assert conditionals(origin, etag_of(path, 1)) >= 1
            # and it stays new
            replies = await through_every_edge(session, fleet, path)
            assert [r.body for r in replies.values()] == [body_of(path, 2)] * 3


# -- the race: a fill in flight while the purge is applied ------------------------------
async def wait_for_origin(origin: OriginServer, path: str, count: int) -> None:
    """Wait until the origin has seen `count` requests for `path` (15 s at most)."""
    await eventually(
        lambda: origin.count(path) >= count, f"{count} requests for {path} at the origin", 15, 0.01
    )


async def test_fill_started_before_a_purge_and_landing_after_it_is_not_kept(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    path = "/race/landing"
    publish(origin, path, 1, delay=2.5)
    async with client_session() as session:
        slow = asyncio.create_task(get(session, fleet.url("edge1"), path))
        await wait_for_origin(origin, path, 1)  # edge1's and the shield's fills are running
        publish(origin, path, 2)
        await purged(session, fleet, {"urls": [path]})
        assert not slow.done()  # the purge was complete while the old answer was on its way
        old = await slow
        assert old.body == body_of(path, 1)  # asked before the purge: the old body is fair

        # the old answer landed in edge1 and the shield after the purge was applied:
        # it counts as older than the purge, so nobody serves it any more
        for _ in range(2):
            replies = await through_every_edge(session, fleet, path)
            assert {e: r.body for e, r in replies.items()} == {
                e: body_of(path, 2) for e in fleet.edge_names
            }, {e: r.cache_status for e, r in replies.items()}


async def test_request_after_a_complete_purge_does_not_join_a_fill_from_before_it(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    path = "/race/inflight"
    publish(origin, path, 1, delay=2.0)
    async with client_session() as session:
        slow = asyncio.create_task(get(session, fleet.url("edge1"), path))
        await wait_for_origin(origin, path, 1)
        publish(origin, path, 2)
        await purged(session, fleet, {"urls": [path]})
        # the purge is reported complete; the fill that began before it is still running
        # on edge1 and on the shield: a request now must not be handed its old answer
        replies = await asyncio.gather(
            *(get(session, fleet.url(edge), path) for edge in fleet.edge_names)
        )
        await slow
        # and once the old answer has landed, no edge holds it
        later = await through_every_edge(session, fleet, path)
    seen = {
        "right after complete": [(r.body, r.cache_status) for r in replies],
        "after the old fill landed": [(r.body, r.cache_status) for r in later.values()],
    }
    assert [r.body for r in replies] == [body_of(path, 2)] * 3, seen
    assert [r.body for r in later.values()] == [body_of(path, 2)] * 3, seen


# -- an edge that was down during the purge ---------------------------------------------
async def test_edge_stopped_during_a_purge_never_serves_the_purged_object(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    path = "/restart/page"
    publish(origin, path, 1)
    async with client_session() as session:
        await warm(session, fleet, origin, path)
        fleet.stop_node("edge1")
        publish(origin, path, 2)
        code, status = await fleet.purge(session, {"urls": [path]}, wait=0)
        assert code == 202, status
        assert status["status"] == "pending"

        fleet.start_node("edge1")
        health: list[tuple[int, Any]] = []
        answers: list[Reply] = []

        async def serving_again() -> bool:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                health.append(await fleet.healthz(session, "edge1"))
            try:
                answers.append(await get(session, fleet.url("edge1"), path))
            except aiohttp.ClientConnectionError:
                return False
            return True

        await eventually(serving_again, "edge1 to serve again", 8, 0.02)
        first = answers[0]
        # its first answer after the restart is already the new content
        assert first.body == body_of(path, 2), first.cache_status
        # while catching up, /healthz says so (and the traffic port is not open)
        assert all(body["status"] == "not ready" for code, body in health if code == 503)
        assert (await fleet.healthz(session, "edge1")) == (200, {"node": "edge1", "status": "ok"})

        final = await fleet.until_complete(session, status["id"])
        assert_complete(final, fleet)
        replies = await through_every_edge(session, fleet, path)
        assert [r.body for r in replies.values()] == [body_of(path, 2)] * 3


# -- the API killed right after accepting ------------------------------------------------
async def test_purge_accepted_before_the_api_is_killed_still_reaches_every_node(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    path = "/crash/page"
    publish(origin, path, 1)
    async with client_session() as session:
        await warm(session, fleet, origin, path)
        publish(origin, path, 2)
        code, status = await fleet.purge(session, {"urls": [path]}, wait=0)
        assert code == 202, status
        fleet.kill_api()
        fleet.start_api()

        final = await fleet.until_complete(session, status["id"])
        assert_complete(final, fleet)
        assert final["seq"] == status["seq"]
        replies = await through_every_edge(session, fleet, path)
        assert [r.body for r in replies.values()] == [body_of(path, 2)] * 3


# -- an edge with two worker processes ---------------------------------------------------
async def test_purge_acknowledged_by_an_edge_is_applied_in_every_worker(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    path = "/workers/page"
    publish(origin, path, 1)
    url = fleet.url(WORKERS_EDGE)
    # a new connection per request: the kernel spreads them over both workers
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as fresh,
        client_session() as session,
    ):
        before = [await get(fresh, url, path) for _ in range(30)]
        assert {r.body for r in before} == {body_of(path, 1)}
        publish(origin, path, 2)
        await purged(session, fleet, {"urls": [path]})
        after = [await get(fresh, url, path) for _ in range(60)]
    assert [r.body for r in after] == [body_of(path, 2)] * 60, [r.cache_status for r in after]


# -- the CLI -----------------------------------------------------------------------------
async def test_cli_purge_by_tag_waits_until_complete_and_prints_the_propagation_time(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    path, tag = "/cli/page", "cli-release"
    publish(origin, path, 1, tags=(tag,))
    async with client_session() as session:
        await warm(session, fleet, origin, path)
        publish(origin, path, 2, tags=(tag,))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "purge",
            "--api",
            fleet.api_url,
            "--service",
            "site",
            "--tag",
            tag,
            "--wait",
            "10",
            env={**os.environ, "EDGESHIELD_TOKEN": TEST_TOKEN},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        text = out.decode()
        assert process.returncode == 0, (text, err.decode())
        assert "complete: all 5 nodes acknowledged" in text, text
        assert propagation_ms(text) is not None, text
        replies = await through_every_edge(session, fleet, path)
        assert [r.body for r in replies.values()] == [body_of(path, 2)] * 3
