"""The purge API as replicas on NATS JetStream, end to end, with real processes.

One fleet for the module: a 3-server NATS cluster (JetStream, each server with its
own store), two purge API replicas (A and B) sharing the stream, a shield and two
edges, and a counting origin. Purges through A complete on every node; A killed
with SIGKILL right after its 202 does not lose the purge (B finishes it and says
so); an Idempotency-Key replayed to B gets A's answer; an edge stopped during a
purge catches up from a replica before it serves; a NATS server killed does not
stop purges, even the leader of the purge stream. That kill comes last: the cluster
keeps its quorum with two servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.fleet_runner import Reply, client_session, get
from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.purge_ha import HaPurgeFleet
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

A, B = 0, 1


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    """A started origin that counts requests, shared by the module."""
    yield from running_origin()


@pytest.fixture(scope="module")
def fleet(origin: OriginServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaPurgeFleet]:
    """NATS (3 servers), 2 API replicas, 1 shield, 2 edges; every process stopped after."""
    started: list[NodeProcess] = []
    fleet = HaPurgeFleet(tmp_path_factory.mktemp("purge-ha"), [origin.url], started)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


def body_of(path: str, version: int) -> bytes:
    """What the origin answers for `path` at `version`."""
    return f"{path} version {version}\n".encode()


def publish(origin: OriginServer, path: str, version: int) -> None:
    """Make the origin answer `path` with `version`, cacheable for 300 s."""
    origin.route(
        path,
        headers={"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"},
        body=body_of(path, version),
        etag=f'"{path}-v{version}"',
    )


async def bodies(session: aiohttp.ClientSession, fleet: HaPurgeFleet, path: str) -> list[bytes]:
    """The body each edge answers for `path`."""
    return [(await get(session, fleet.url(edge), path)).body for edge in fleet.edge_names]


async def warm(
    session: aiohttp.ClientSession, fleet: HaPurgeFleet, origin: OriginServer, path: str
) -> None:
    """Store version 1 of `path` on every edge (and the shield), then publish version 2."""
    publish(origin, path, 1)
    assert await bodies(session, fleet, path) == [body_of(path, 1)] * 2, fleet.logs()
    assert origin.count(path) == 1
    assert await bodies(session, fleet, path) == [body_of(path, 1)] * 2  # from cache
    publish(origin, path, 2)


def assert_complete(status: dict[str, Any], fleet: HaPurgeFleet) -> None:
    """Every node (the shield and both edges) acknowledged the purge."""
    assert status["status"] == "complete", (status, fleet.logs())
    assert status["acked"] == status["total"] == 3, status
    assert set(status["nodes"]) == set(fleet.node_names), status
    assert status["pending"] == [], status


async def test_purges_through_replica_a_complete_on_every_node(
    fleet: HaPurgeFleet, origin: OriginServer
) -> None:
    path = "/ha/first"
    async with client_session() as session:
        await warm(session, fleet, origin, path)
        code, status, _ = await fleet.purge_at(A, session, {"urls": [path]}, wait=15)
        assert code == 200, (code, status, fleet.logs())
        assert_complete(status, fleet)
        # replica B answers for the same purge from the shared log
        assert_complete(await fleet.status_at(B, session, status["id"]), fleet)
        assert await bodies(session, fleet, path) == [body_of(path, 2)] * 2
        assert origin.count(path) == 2  # refilled once, through the shield


async def test_a_purge_survives_replica_a_killed_right_after_its_202(
    fleet: HaPurgeFleet, origin: OriginServer
) -> None:
    path = "/ha/killed"
    async with client_session() as session:
        await warm(session, fleet, origin, path)
        # edge2 is away, so the purge cannot be complete when A dies
        fleet.stop_node("edge2")
        code, status, _ = await fleet.purge_at(A, session, {"urls": [path]}, wait=0)
        assert code == 202, status
        fleet.kill_replica(A)
        fleet.start_node("edge2")  # pulls from A (dead), then from B
        fleet.wait_ready("edge2", timeout=30)
        final = await fleet.status_at(B, session, status["id"], wait=20)
        assert_complete(final, fleet)
        assert final["seq"] == status["seq"]
        assert await bodies(session, fleet, path) == [body_of(path, 2)] * 2
        fleet.start_replica(A)


async def test_an_idempotency_key_replayed_to_the_other_replica_gets_the_first_answer(
    fleet: HaPurgeFleet, origin: OriginServer
) -> None:
    key = {"Idempotency-Key": "deploy-2026-11-30-7"}
    body = {"urls": ["/ha/idempotent"]}
    async with client_session() as session:
        code, first, first_headers = await fleet.purge_at(A, session, body, headers=key)
        assert code == 200, first
        code, replay, replay_headers = await fleet.purge_at(B, session, body, headers=key)
        assert code == 200, replay
        assert (replay["id"], replay["seq"]) == (first["id"], first["seq"])
        assert replay_headers.get("Idempotent-Replayed") == "true"
        assert "Idempotent-Replayed" not in first_headers
        # the same key for another purge is refused by either replica
        code, refused, _ = await fleet.purge_at(B, session, {"urls": ["/other"]}, headers=key)
        assert code == 422, refused


async def test_an_edge_stopped_during_a_purge_catches_up_and_never_serves_the_purged_object(
    fleet: HaPurgeFleet, origin: OriginServer
) -> None:
    path = "/ha/restart"
    async with client_session() as session:
        await warm(session, fleet, origin, path)
        fleet.stop_node("edge1")
        code, status, _ = await fleet.purge_at(B, session, {"urls": [path]}, wait=0)
        assert code == 202, status
        fleet.start_node("edge1")
        answers: list[Reply] = []

        async def serving_again() -> bool:
            try:
                answers.append(await get(session, fleet.url("edge1"), path))
            except aiohttp.ClientConnectionError:
                return False  # the port opens only once caught up
            return True

        await eventually(serving_again, "edge1 to serve again after catching up", 30, 0.02)
        first = answers[0]
        assert first.body == body_of(path, 2), first.cache_status
        assert_complete(await fleet.status_at(A, session, status["id"], wait=20), fleet)


async def test_purges_keep_completing_with_a_nats_server_killed(
    fleet: HaPurgeFleet, origin: OriginServer
) -> None:
    # the worst one to lose: the leader of the purge stream (a new one is elected)
    leader = fleet.cluster.stream_leader("edgeshield-purges")
    assert leader is not None
    leader.kill()
    async with client_session(timeout=60) as session:
        for round_, replica in enumerate((A, B, A)):
            path = f"/ha/quorum-{round_}"
            await warm(session, fleet, origin, path)
            code, status, _ = await fleet.purge_at(replica, session, {"urls": [path]}, wait=30)
            assert code == 200, (code, status, fleet.logs())
            assert_complete(status, fleet)
            assert await bodies(session, fleet, path) == [body_of(path, 2)] * 2
        new_leader = fleet.cluster.stream_leader("edgeshield-purges")
        assert new_leader is not None and new_leader is not leader
