"""Edge and shield together: fallback to the origin, revalidation through the tiers, and
staleness that travels down from the shield. Real processes, a real counting origin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet_runner import TieredFleet, client_session, get
from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    """A started origin that counts requests."""
    yield from running_origin()


async def test_with_every_shield_dead_the_edge_goes_to_the_origin(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    origin.route("/fallback", headers={"Cache-Control": "max-age=300"}, body=b"direct")
    fleet = TieredFleet(tmp_path, [origin.url], processes, edges=1, shields=2).start()
    for shield in fleet.shield_names:
        fleet.kill(shield)
    async with client_session() as session:
        reply = await get(session, fleet.url("edge1"), "/fallback")
    assert (reply.status, reply.body) == (200, b"direct")
    assert reply.tiers == ["edge1"]  # no shield entry: it came from the origin itself
    assert origin.count("/fallback") == 1


async def test_without_origin_fallback_a_dead_shield_tier_is_a_502_naming_it(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    origin.route("/nofallback", headers={"Cache-Control": "max-age=300"}, body=b"x")
    fleet = TieredFleet(
        tmp_path,
        [origin.url],
        processes,
        edges=1,
        shields=1,
        service_extra="origin_fallback = false",
    ).start()
    fleet.kill(fleet.shield_names[0])
    async with client_session() as session:
        reply = await get(session, fleet.url("edge1"), "/nofallback")
    assert reply.status == 502
    assert b"no shield is reachable" in reply.body
    assert origin.count("/nofallback") == 0


async def test_an_edge_revalidates_through_the_shield_which_answers_304_from_its_copy(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    # both tiers keep it 1 s, so the edge's revalidation finds the shield stale too
    origin.route(
        "/reval",
        headers={"Cache-Control": "max-age=1", "CDN-Cache-Control": "max-age=1"},
        body=b"same",
        etag='"e1"',
    )
    fleet = TieredFleet(tmp_path, [origin.url], processes, edges=1, shields=1).start()
    async with client_session() as session:
        first = await get(session, fleet.url("edge1"), "/reval")
        assert first.status == 200
        await asyncio.sleep(1.2)  # the subject: max-age=1 runs out in real time
        again = await get(session, fleet.url("edge1"), "/reval")
    assert (again.status, again.body) == (200, b"same")
    # both tiers revalidated: the origin saw one conditional request and answered 304
    assert origin.count("/reval") == 2
    assert any(h.get("If-None-Match") == '"e1"' for h in origin.seen_headers)
    assert "fwd=stale" in again.cache_status[-1] and "fwd-status=304" in again.cache_status[-1]


async def test_what_a_shield_serves_stale_is_stale_at_the_edge_too(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    origin.route(
        "/swr",
        headers={"Cache-Control": "max-age=1, stale-while-revalidate=60"},
        body=b"old",
    )
    fleet = TieredFleet(tmp_path, [origin.url], processes, edges=2, shields=1).start()
    async with client_session() as session:
        await get(session, fleet.url("edge1"), "/swr")  # the shield stores it
        await asyncio.sleep(1.2)  # the subject: max-age=1 runs out in real time
        origin.route(
            "/swr",
            headers={"Cache-Control": "max-age=1, stale-while-revalidate=60"},
            body=b"new",
            delay=0.5,
        )
        # edge2 has nothing: the shield answers from its stale copy (and revalidates)
        stale = await get(session, fleet.url("edge2"), "/swr")
        assert stale.body == b"old"
        assert "stale-while-revalidate" in stale.cache_status[0]
        # edge2 stored that answer as already stale, never as fresh: every answer it
        # gives of the old body says stale, and the new body arrives by revalidation
        seen = [stale]
        for _ in range(10):
            reply = await get(session, fleet.url("edge2"), "/swr")
            seen.append(reply)
            if reply.body == b"new":
                break
            await asyncio.sleep(0.5)
    assert seen[-1].body == b"new", [r.cache_status for r in seen]
    for reply in seen:
        if reply.body == b"old" and reply.tiers[-1] == "edge2":
            edge_entry = reply.cache_status[-1]
            assert "stale-while-revalidate" in edge_entry or "fwd=" in edge_entry, edge_entry
    assert "X-Edgeshield-Stale" not in seen[-1].headers
