"""Edge and shield together when shields die: fallback to the origin, or a 502 naming
the dead shield tier. Real processes, a real counting origin. (Revalidation through the
tiers and staleness travelling down from the shield are tested in-process, on a frozen
clock: tests/edge/engine/test_tiers.py.)
"""

from __future__ import annotations

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
