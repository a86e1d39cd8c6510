"""The shield tier end to end: real shield and edge processes, a real counting origin.

Each test starts its own fleet (2 shields and 3 edges on loopback unless it needs
less) and asserts what the origin saw, the way Varnish's tests assert counters:
collapsing across edges, failover when a shield dies, stale-if-error and bounded
errors when the origin is down, origin ejection, loop refusal, forwarding headers
and the origin connection cap.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.cache.keys import primary_key
from edge.upstream import rendezvous_order
from tests.support.fleet_runner import (
    Reply,
    SilentOrigin,
    TieredFleet,
    client_session,
    get,
    shield_for,
)
from tests.support.fleetfile import FleetSpec
from tests.support.origin import OriginServer, pattern_bytes, running_origin
from tests.support.ports import free_port
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

CACHEABLE = {"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"}


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    """A started origin that counts requests."""
    yield from running_origin()


def origin_requests(origin: OriginServer, prefix: str) -> int:
    """Requests the origin saw whose path (and query) starts with `prefix`."""
    return sum(n for path, n in origin.requests.items() if path.startswith(prefix))


def owned_paths(prefix: str, owner: str, shields: list[str], count: int) -> list[str]:
    """`count` fresh paths under `prefix` that the ring gives to `owner` first."""
    paths: list[str] = []
    i = 0
    while len(paths) < count:
        path = f"{prefix}?n={i}"
        if shield_for(path, shields) == owner:
            paths.append(path)
        i += 1
    return paths


# -- collapsing across the fleet --------------------------------------------------------
async def test_90_concurrent_misses_across_3_edges_make_one_origin_request(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    origin.route("/cold.bin", headers=CACHEABLE, size=300_000, delay=0.5)
    fleet = TieredFleet(tmp_path, [origin.url], processes).start()

    async with client_session() as session:
        replies = await asyncio.gather(
            *(
                get(session, fleet.url(edge), "/cold.bin")
                for edge in fleet.edge_names
                for _ in range(30)
            )
        )

    assert [r.status for r in replies] == [200] * 90
    assert all(r.body == pattern_bytes(300_000) for r in replies)
    assert origin.count("/cold.bin") == 1
    # every answer came through the one shield the ring picks for this key
    owner = shield_for("/cold.bin", fleet.shield_names)
    assert {r.tiers[0] for r in replies} == {owner}


async def test_object_fetched_through_each_edge_once_is_one_origin_request_and_two_shield_hits(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    origin.route("/warm.txt", headers={"Cache-Control": "max-age=300"}, body=b"warm body\n")
    fleet = TieredFleet(tmp_path, [origin.url], processes).start()
    owner = shield_for("/warm.txt", fleet.shield_names)

    async with client_session() as session:
        replies = [await get(session, fleet.url(e), "/warm.txt") for e in fleet.edge_names]

    assert [r.body for r in replies] == [b"warm body\n"] * 3
    assert origin.count("/warm.txt") == 1
    first, *later = replies
    # Cache-Status (RFC 9211): one entry per tier, the shield first and the edge last
    assert first.tiers == [owner, "edge1"]
    assert first.cache_status[0].startswith(f"{owner}; fwd=uri-miss; stored")
    assert first.cache_status[1].startswith("edge1; fwd=uri-miss; stored")
    for edge, reply in zip(["edge2", "edge3"], later, strict=True):
        assert reply.tiers == [owner, edge]
        assert reply.cache_status[0].startswith(f"{owner}; hit")
        assert reply.cache_status[1].startswith(f"{edge}; fwd=uri-miss; stored")
    hits = [r for r in replies if r.cache_status[0].startswith(f"{owner}; hit")]
    assert len(hits) == 2


# -- a shield dies under load -----------------------------------------------------------
async def test_killed_shield_under_load_loses_no_request_and_rejoins_after_restart(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    origin.route("/load", headers=CACHEABLE, body=b"L" * 4000)
    origin.route("/kept", headers=CACHEABLE, body=b"K" * 4000)
    origin.route("/after", headers=CACHEABLE, body=b"A" * 4000)
    origin.route("/back", headers=CACHEABLE, body=b"B" * 4000)
    fleet = TieredFleet(tmp_path, [origin.url], processes).start()
    shields = fleet.shield_names
    doomed, survivor = "shield1", "shield2"
    # objects stored in each shield before the crash (through edge1 only)
    kept_survivor = owned_paths("/kept", survivor, shields, 5)
    kept_doomed = owned_paths("/kept", doomed, shields, 5)
    replies: list[tuple[str, Reply]] = []
    cut: list[tuple[str, str, bool, str]] = []
    stop = asyncio.Event()

    async with client_session() as session:
        for path in kept_survivor + kept_doomed:
            assert (await get(session, fleet.url("edge1"), path)).status == 200

        loop = asyncio.get_running_loop()
        kill_window = [float("inf"), float("inf")]  # when the kill began and was done

        async def steady_load(edge: str, worker: int) -> None:
            i = 0
            while not stop.is_set():
                path = f"/load?w={edge}-{worker}&i={i}"
                began = loop.time()
                try:
                    replies.append((path, await get(session, fleet.url(edge), path)))
                except aiohttp.ClientPayloadError as exc:
                    # a body cut short: never allowed, the edge takes the rest of a body
                    # from the next shield when one dies mid-response
                    in_flight = began <= kill_window[1] and loop.time() >= kill_window[0]
                    cut.append((edge, path, in_flight, repr(exc)[:120]))
                i += 1

        load = [
            asyncio.create_task(steady_load(edge, worker))
            for edge in fleet.edge_names
            for worker in range(2)
        ]
        # load on every edge before the kill, and as much again after it
        await eventually(lambda: len(replies) >= 20, "20 answers under load before the kill")
        kill_window[0] = loop.time()
        await asyncio.to_thread(fleet.kill, doomed)
        kill_window[1] = loop.time()
        after_kill = len(replies)
        await eventually(
            lambda: len(replies) >= after_kill + 40, "40 answers under load after the kill"
        )
        stop.set()
        await asyncio.gather(*load)

        failed = [(p, r.status, r.body[:200]) for p, r in replies if r.status != 200]
        assert not failed, failed
        assert not cut, cut
        assert all(r.body == b"L" * 4000 for _, r in replies)
        assert len(replies) > 30

        # objects the survivor holds: served by it through the other edges, no refetch
        for path in kept_survivor:
            reply = await get(session, fleet.url("edge2"), path)
            assert reply.status == 200
            assert reply.cache_status[0].startswith(f"{survivor}; hit")
            assert origin.count(path) == 1
        # the dead shield's keys go to the next shield on the ring (the survivor)
        for edge in fleet.edge_names:
            for path in owned_paths(f"/after-{edge}", doomed, shields, 3):
                origin.route(path.split("?")[0], headers=CACHEABLE, body=b"A" * 4000)
                reply = await get(session, fleet.url(edge), path)
                assert reply.status == 200
                assert reply.tiers == [survivor, edge]

        await asyncio.to_thread(fleet.restart, doomed)
        fresh = iter(range(10_000))

        async def doomed_serves_again() -> bool:
            n = next(fresh)
            for edge in fleet.edge_names:
                path = owned_paths(f"/back-{n}", doomed, shields, 1)[0]
                origin.route(path.split("?")[0], headers=CACHEABLE, body=b"B")
                reply = await get(session, fleet.url(edge), path)
                assert reply.status == 200
                if reply.tiers[0] != doomed:
                    return False
            return True

        await eventually(doomed_serves_again, f"{doomed} to take its keys back")
        # what it stored before the crash is still there (disk store survives SIGKILL)
        for path in kept_doomed:
            reply = await get(session, fleet.url("edge3"), path)
            assert reply.status == 200
            assert reply.cache_status[0].startswith(f"{doomed}; hit")
            assert origin.count(path) == 1


# -- the origin is down -----------------------------------------------------------------
async def test_hung_origin_gives_a_504_naming_the_cause_not_a_hang(
    processes: list[NodeProcess], tmp_path: Path
) -> None:
    silent = SilentOrigin()
    try:
        fleet = TieredFleet(
            tmp_path,
            [silent.url],
            processes,
            edges=1,
            service_extra="read_timeout = 1.0\nhealth_check_interval = 30",
        ).start()
        async with client_session(timeout=15) as session:
            reply = await get(session, fleet.url("edge1"), "/slow.txt")
    finally:
        silent.close()
    assert reply.status == 504, reply
    assert len(reply.body) < 512
    assert b"did not answer in time" in reply.body, reply.body


# -- several origins, one failing -------------------------------------------------------
async def test_failing_origin_is_ejected_and_returns_after_recovery(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    bad = OriginServer().start()
    try:
        good = origin
        good.route("/health", body=b"ok")
        good.route("/two", headers=CACHEABLE, body=b"good")
        # the failing origin passes its health check at first: only requests show it
        bad.route("/health", body=b"ok")
        bad.route("/two", status=503, body=b"bad origin")
        fleet = TieredFleet(
            tmp_path,
            [bad.url, good.url],
            processes,
            service_extra='health_check_path = "/health"\nhealth_check_interval = 0.2',
        ).start()
        async with client_session() as session:
            n = 0

            async def round_of(count: int) -> list[Reply]:
                nonlocal n
                replies = []
                for _ in range(count):
                    edge = fleet.edge_names[n % 3]
                    replies.append(await get(session, fleet.url(edge), f"/two?i={n}"))
                    n += 1
                return replies

            # passive: 503s from the bad origin are retried on the good one
            replies = await round_of(30)
            assert [(r.status, r.body) for r in replies] == [(200, b"good")] * 30
            # and after a few failures in a row (per shield) the bad origin is ejected
            assert origin_requests(bad, "/two") <= 3 * len(fleet.shield_names)

            # active: the bad origin fails its health check too; it gets nothing
            bad.route("/health", status=503, body=b"down")

            async def every_shield_saw_it_fail() -> bool:
                failed = f"origin {bad.url} failed its health check"
                return all(failed in fleet.nodes[name].log() for name in fleet.shield_names)

            await eventually(every_shield_saw_it_fail, "every shield to find the origin unhealthy")
            seen = origin_requests(bad, "/two")
            replies = await round_of(30)
            assert [(r.status, r.body) for r in replies] == [(200, b"good")] * 30
            assert origin_requests(bad, "/two") == seen

            # recovery: healthy again, it takes its share of requests back
            bad.route("/health", body=b"ok")
            bad.route("/two", headers=CACHEABLE, body=b"good")

            async def bad_serves_again() -> bool:
                replies = await round_of(6)
                assert all(r.status == 200 for r in replies)
                return origin_requests(bad, "/two") > seen

            await eventually(bad_serves_again, "the recovered origin to get requests")
    finally:
        bad.close()


# -- loops ------------------------------------------------------------------------------
async def test_edge_configured_as_its_own_shield_ends_in_508(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    origin.route("/loop.txt", headers=CACHEABLE, body=b"never reached")
    port, admin_port = free_port(), free_port()
    # written by hand: the shield entry names the edge's own listener ("localhost" is
    # 127.0.0.1 spelled another way, which is all it takes to get past a config check)
    spec = FleetSpec(tmp_path, origins=[origin.url])
    text = spec.render().split("[[shields]]")[0].split("[[edges]]")[0]
    text += f"""
[[shields]]
name = "shield1"
region = "eu"
listen = "localhost:{port}"
admin_listen = "localhost:{admin_port}"
cache_dir = "{tmp_path / "shield1"}"
cache_size = "64MiB"

[[edges]]
name = "edge1"
region = "eu"
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
cache_dir = "{tmp_path / "edge1"}"
cache_size = "64MiB"
"""
    path = tmp_path / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    edge = NodeProcess(
        ["edge", "--config", str(path), "--node", "edge1"], tmp_path / "edge1.log"
    ).start()
    processes.append(edge)
    edge.wait_listening(f"127.0.0.1:{port}")

    async with client_session(timeout=15) as session:
        reply = await get(session, f"http://127.0.0.1:{port}", "/loop.txt")
    assert reply.status == 508, (reply, edge.log()[-2000:])
    assert b"loop" in reply.body.lower()
    assert origin.count("/loop.txt") == 0

    # one trip round the loop, not a storm: the edge's access log (JSON lines, written
    # in batches) shows the client's request and the one it sent itself, no more
    def handled() -> list[dict[str, Any]]:
        lines = [line for line in edge.log().splitlines() if line.startswith("{")]
        records = [json.loads(line) for line in lines]
        return [r for r in records if r.get("target") == "/loop.txt"]

    async def both_logged() -> bool:
        return len(handled()) >= 2

    await eventually(both_logged, "the edge to log the looped request")
    # a later request logged means the batched log holds everything before it
    async with client_session(timeout=15) as session:
        await get(session, f"http://127.0.0.1:{port}", "/after-the-loop.txt")

    async def marker_logged() -> bool:
        return '"/after-the-loop.txt"' in edge.log()

    await eventually(marker_logged, "the edge to log the request after the loop")
    assert sorted(r["status"] for r in handled()) == [508, 508]
    assert "marked down" not in edge.log()


# -- what the origin and the client see -------------------------------------------------
async def test_origin_sees_client_address_and_both_tiers_in_via_and_cdn_loop(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    origin.route("/who.txt", headers=CACHEABLE, body=b"who")
    fleet = TieredFleet(tmp_path, [origin.url], processes, edges=1).start()
    owner = shield_for("/who.txt", fleet.shield_names)
    client_address = "127.0.0.9"  # the nodes talk from 127.0.0.1

    async with client_session(local_address=client_address) as session:
        reply = await get(session, fleet.url("edge1"), "/who.txt")

    assert reply.status == 200
    seen = [h for h in origin.seen_headers if "CDN-Loop" in h]
    assert len(seen) == 1
    headers = seen[0]
    forwarded_for = [a.strip() for a in headers["X-Forwarded-For"].split(",")]
    assert forwarded_for[0] == client_address
    assert forwarded_for[1:] == ["127.0.0.1"]  # the edge, as the shield saw it
    assert headers["Forwarded"].split(",")[0].strip().startswith(f"for={client_address};")
    assert [v.strip() for v in headers["Via"].split(",")] == [
        "1.1 edge1 (edgeshield)",
        f"1.1 {owner} (edgeshield)",
    ]
    # RFC 8586: each node adds its token
    tokens = [v.split(";")[0].strip() for v in headers["CDN-Loop"].split(",")]
    assert tokens == ["edgeshield-edge1", f"edgeshield-{owner}"]
    # the client's Via lists both tiers too, origin-most first (RFC 9110 7.6.3)
    assert [v.strip() for v in reply.headers["Via"].split(",")] == [
        f"1.1 {owner} (edgeshield)",
        "1.1 edge1 (edgeshield)",
    ]
    assert reply.tiers == [owner, "edge1"]


# -- the origin connection cap ----------------------------------------------------------
CAPPED = "max_origin_connections = 2\norigin_queue = 0"


async def test_shield_caps_concurrent_origin_requests_with_503_retry_after(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    origin.route("/slow", headers=CACHEABLE, body=b"slow", delay=1.0)
    fleet = TieredFleet(
        tmp_path, [origin.url], processes, edges=1, shields=1, service_extra=CAPPED
    ).start()

    async with client_session() as session:
        replies = await asyncio.gather(
            *(get(session, fleet.url("shield1"), f"/slow?i={i}") for i in range(6))
        )

    statuses = sorted(r.status for r in replies)
    assert statuses == [200, 200, 503, 503, 503, 503], statuses
    for reply in replies:
        if reply.status == 503:
            assert reply.headers.get("Retry-After", "").isdigit(), reply
            assert b"limit" in reply.body
    assert origin_requests(origin, "/slow") == 2


async def test_origin_cap_holds_for_requests_through_the_edges(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    """The cap protects the origin: an edge must not route around a shield's 503."""
    origin.route("/slow", headers=CACHEABLE, body=b"slow", delay=1.0)
    fleet = TieredFleet(
        tmp_path, [origin.url], processes, edges=1, shields=1, service_extra=CAPPED
    ).start()

    async with client_session() as session:
        replies = await asyncio.gather(
            *(get(session, fleet.url("edge1"), f"/slow?i={i}") for i in range(6))
        )

    statuses = sorted(r.status for r in replies)
    assert origin_requests(origin, "/slow") == 2, (statuses, fleet.logs())
    assert statuses == [200, 200, 503, 503, 503, 503], statuses
    assert all(r.headers.get("Retry-After") for r in replies if r.status == 503)


def test_ring_owner_helper_agrees_with_rendezvous_order() -> None:
    """The tests' idea of a key's shield is the ring's (guards the helpers above)."""
    names = ["shield1", "shield2"]
    paths = owned_paths("/x", "shield2", names, 5)
    for path in paths:
        assert rendezvous_order(primary_key("site", "www.example.com", path), names)[0] == "shield2"


# -- an origin's failures are not a shield's ---------------------------------------------
async def test_an_origin_cutting_its_bodies_does_not_make_an_edge_skip_a_healthy_shield(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    """A shield passes its origin's broken body on as a cut; were the cut held against
    the shield, one service's hostile origin would take every shield out of every
    edge's ring (all services' keys), as often as it likes."""
    origin.route("/cut", headers=CACHEABLE, size=200_000, cut_after=50_000)
    origin.route("/whole", headers=CACHEABLE, body=b"W" * 100)
    fleet = TieredFleet(tmp_path, [origin.url], processes, edges=1).start()
    shields = fleet.shield_names
    async with client_session() as session:
        for path in owned_paths("/cut", shields[0], shields, 2):
            try:
                reply = await get(session, fleet.url("edge1"), path)
            except aiohttp.ClientError:
                pass  # the client sees the cut, as it should
            else:
                assert reply.status >= 500 or len(reply.body) < 200_000, reply
        assert origin_requests(origin, "/cut") >= 2
        for path in owned_paths("/whole", shields[0], shields, 5):
            reply = await get(session, fleet.url("edge1"), path)
            assert reply.status == 200
            assert reply.tiers == [shields[0], "edge1"], (reply.cache_status, fleet.logs())
    assert "marked down" not in fleet.logs()


async def test_an_origin_slower_than_read_timeout_gets_one_504_from_its_shield(
    origin: OriginServer, processes: list[NodeProcess], tmp_path: Path
) -> None:
    """The edge waits for a shield longer than the shield waits for its origin: the
    shield's 504 comes back, the shield is not marked down, and the slow request is
    not sent again through the next shield (a second origin fetch)."""
    origin.route("/slow", headers=CACHEABLE, body=b"S", delay=2.5)
    fleet = TieredFleet(
        tmp_path,
        [origin.url],
        processes,
        edges=1,
        service_extra="read_timeout = 1.0\nhealth_check_interval = 30",
    ).start()
    shields = fleet.shield_names
    path = owned_paths("/slow", shields[0], shields, 1)[0]
    async with client_session(timeout=30) as session:
        reply = await get(session, fleet.url("edge1"), path)
    assert reply.status == 504, reply
    assert b"did not answer in time" in reply.body, reply.body
    assert origin_requests(origin, "/slow") == 1
    assert "marked down" not in fleet.logs()
