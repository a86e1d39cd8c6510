"""Availability under failure, end to end with real processes.

- A worker of a 2-worker edge killed with SIGKILL is replaced (within 2 s), the node
  says it is degraded meanwhile (/healthz, metrics), and a purge pushed while it is
  down is acknowledged only once it is on disk and applied in every live worker.
- A purge the node cannot save is not acknowledged, and is once it can be.
- With the origin stopped, objects that were cached are served stale (marked), only
  objects never cached fail; the shield logs the outage in a handful of lines.
- A Range on a miss is answered 206 while the fill stores the whole object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.fleet_runner import Reply, TieredFleet, client_session, get
from tests.support.origin import OriginServer, pattern_bytes, running_origin
from tests.support.processes import NodeProcess
from tests.support.purge_fleet import NODE_AUTH, PurgeFleet, running_purge_fleet
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

EDGE = "edge1"


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    """The workers fleet's origin (never stopped)."""
    yield from running_origin()


@pytest.fixture(scope="module")
def fleet(origin: OriginServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PurgeFleet]:
    """The purge API, one shield, one edge with two worker processes."""
    yield from running_purge_fleet(
        tmp_path_factory.mktemp("availability"), [origin.url], edges=1, shields=1, workers={EDGE: 2}
    )


# -- helpers ----------------------------------------------------------------------------
def worker_pids(fleet: PurgeFleet, name: str) -> list[int]:
    """The pids of a node's other workers (children of its worker 0)."""
    node = fleet.nodes[name]
    assert node.proc is not None
    pid = node.proc.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


async def metric(session: aiohttp.ClientSession, admin_url: str, name: str) -> float:
    """One unlabelled-by-outcome metric's value from a node's admin /metrics."""
    async with session.get(admin_url + "/metrics", headers=NODE_AUTH) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + "_total{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text[:2000]}")


async def wait_health(
    session: aiohttp.ClientSession, fleet: PurgeFleet, name: str, status: str, timeout: float
) -> dict[str, object]:
    """Poll /healthz until it reports `status`; its JSON."""
    last: list[object] = [None]

    async def reports_it() -> bool:
        code, last[0] = await fleet.healthz(session, name)
        return code == 200 and isinstance(last[0], dict) and last[0].get("status") == status

    await eventually(reports_it, f"{name} to report {status!r}", timeout, interval=0.02)
    assert isinstance(last[0], dict)
    return last[0]


def rule_ids_on_disk(fleet: PurgeFleet, name: str) -> set[str]:
    """The purge ids in a node's saved rules file."""
    path = Path(fleet.config(name).cache_dir) / "purge-state" / "purge-rules.jsonl"
    ids = set()
    for line in path.read_text().splitlines():
        ids.add(json.loads(line)["record"]["id"])
    return ids


def cacheable(origin: OriginServer, path: str, body: bytes, cache_control: str) -> None:
    """Make the origin answer `path` with `body`, with an ETag."""
    origin.route(
        path,
        headers={"Cache-Control": cache_control, "Content-Type": "application/octet-stream"},
        body=body,
        etag=f'"{abs(hash(body))}"',
    )


async def every_worker(url: str, path: str, count: int = 40) -> list[Reply]:
    """`count` GETs, each on a new connection (the kernel spreads them over workers)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=20)
    ) as fresh:
        return [await get(fresh, url, path) for _ in range(count)]


# -- 1. a dead worker is replaced; purges are acknowledged only when saved ---------------
async def test_a_killed_worker_is_replaced_and_a_purge_meanwhile_is_saved_before_its_ack(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    path = "/workers/killed"
    cacheable(origin, path, b"version 1\n", "max-age=300")
    admin = fleet.config(EDGE).admin_url
    async with client_session() as session:
        await wait_health(session, fleet, EDGE, "ok", 20)
        before = await every_worker(fleet.url(EDGE), path)
        assert {r.body for r in before} == {b"version 1\n"}
        (victim,) = worker_pids(fleet, EDGE)
        cacheable(origin, path, b"version 2\n", "max-age=300")
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        purge = asyncio.create_task(fleet.purge(session, {"urls": [path]}, wait=15))
        degraded = await wait_health(session, fleet, EDGE, "degraded", 5)
        assert degraded["workers"] == {"live": 1, "expected": 2}
        assert await metric(session, admin, "edgeshield_workers_live") == 1
        await wait_health(session, fleet, EDGE, "ok", 5)
        replaced_in = time.monotonic() - killed_at
        print(f"worker replaced in {replaced_in:.2f}s")
        code, answer = await purge
        assert code == 200 and answer["status"] == "complete", answer
        # acknowledged: on disk, and no live worker serves what it purged
        assert answer["id"] in rule_ids_on_disk(fleet, EDGE)
        after = await every_worker(fleet.url(EDGE), path)
        assert {r.body for r in after} == {b"version 2\n"}
        assert await metric(session, admin, "edgeshield_workers_live") == 2
        assert await metric(session, admin, "edgeshield_worker_restarts") >= 1
    (replacement,) = worker_pids(fleet, EDGE)
    assert replacement != victim
    assert replaced_in < 2.0, replaced_in
    log = fleet.nodes[EDGE].log()
    assert f"worker 1 (pid {victim}) exited with SIGKILL" in log
    # reaped: no zombie left behind
    assert not Path(f"/proc/{victim}").exists()


async def test_a_purge_that_cannot_be_saved_is_not_acknowledged_until_it_is(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    path = "/workers/unsaved"
    cacheable(origin, path, b"version 1\n", "max-age=300")
    rules = Path(fleet.config(EDGE).cache_dir) / "purge-state" / "purge-rules.jsonl"
    kept = rules.with_name("kept.jsonl")
    async with client_session() as session:
        # a first purge that is saved, so the rules file exists
        code, answer = await fleet.purge(session, {"urls": ["/workers/first"]})
        assert code == 200, answer
        assert {r.body for r in await every_worker(fleet.url(EDGE), path, 10)} == {b"version 1\n"}
        cacheable(origin, path, b"version 2\n", "max-age=300")
        # the rules file cannot be appended to: a directory stands in its place
        shutil.move(rules, kept)
        rules.mkdir()
        try:
            code, answer = await fleet.purge(session, {"urls": [path]}, wait=2)
            assert code == 202 and answer["status"] == "pending", answer
            status = await fleet.status(session, answer["id"])
            assert (status.get("nodes") or {}).get(EDGE) is None, status
            # not applied either: every worker still serves what was cached
            unsaved = await every_worker(fleet.url(EDGE), path, 10)
            assert {r.body for r in unsaved} == {b"version 1\n"}
        finally:
            rules.rmdir()
            shutil.move(kept, rules)
        await fleet.until_complete(session, answer["id"], timeout=20)
        assert answer["id"] in rule_ids_on_disk(fleet, EDGE)
        after = await every_worker(fleet.url(EDGE), path, 20)
        assert {r.body for r in after} == {b"version 2\n"}


async def test_a_worker_that_cannot_take_a_purge_is_replaced_before_the_ack(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    path = "/workers/stopped"
    cacheable(origin, path, b"version 1\n", "max-age=300")
    async with client_session(timeout=40) as session:
        await wait_health(session, fleet, EDGE, "ok", 20)
        assert {r.body for r in await every_worker(fleet.url(EDGE), path, 10)} == {b"version 1\n"}
        (stuck,) = worker_pids(fleet, EDGE)
        cacheable(origin, path, b"version 2\n", "max-age=300")
        os.kill(stuck, signal.SIGSTOP)  # alive, but takes nothing
        try:
            code, answer = await fleet.purge(session, {"urls": [path]}, wait=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stuck, signal.SIGCONT)
        assert code == 200 and answer["status"] == "complete", answer
        assert answer["id"] in rule_ids_on_disk(fleet, EDGE)
        # the stuck worker was killed, not left serving what the purge covers
        await wait_health(session, fleet, EDGE, "ok", 10)
        assert stuck not in worker_pids(fleet, EDGE)
        after = await every_worker(fleet.url(EDGE), path)
        assert {r.body for r in after} == {b"version 2\n"}
    assert "did not take a purge rule; replacing it" in fleet.nodes[EDGE].log()


# -- 5. a Range on a miss -----------------------------------------------------------------
async def test_a_range_on_a_miss_is_answered_206_and_the_whole_object_is_stored(
    fleet: PurgeFleet, origin: OriginServer
) -> None:
    size = 300_000
    whole = pattern_bytes(size)
    url = fleet.url(EDGE)
    async with client_session() as session:
        paths = [f"/range/{name}" for name in ("one", "suffix", "multi", "ifrange", "bad")]
        for path in paths:
            origin.route(
                path,
                headers={"Cache-Control": "max-age=300", "Content-Type": "video/mp4"},
                size=size,
                etag='"r1"',
            )
        one = await get(session, url, paths[0], headers={"Range": "bytes=1000-1999"})
        assert one.status == 206, one.cache_status
        assert one.headers["Content-Range"] == f"bytes 1000-1999/{size}"
        assert one.body == whole[1000:2000]
        suffix = await get(session, url, paths[1], headers={"Range": "bytes=-500"})
        assert (suffix.status, suffix.body) == (206, whole[-500:])
        # several ranges: the whole body, as for a hit
        multi = await get(session, url, paths[2], headers={"Range": "bytes=0-1,5-6"})
        assert (multi.status, multi.body) == (200, whole)
        # a failed If-Range: the whole body (RFC 9110 13.1.5)
        stale = {"Range": "bytes=0-9", "If-Range": '"other"'}
        if_range = await get(session, url, paths[3], headers=stale)
        assert (if_range.status, if_range.body) == (200, whole)
        bad = await get(session, url, paths[4], headers={"Range": f"bytes={size}-"})
        assert bad.status == 416 and bad.headers["Content-Range"] == f"bytes */{size}"
        # the fill stored the whole object: now a hit, whole or ranged
        hit = await get(session, url, paths[0])
        assert (hit.status, hit.body) == (200, whole)
        assert "hit" in hit.cache_status[-1]
        hit_range = await get(session, url, paths[0], headers={"Range": "bytes=1000-1999"})
        assert (hit_range.status, hit_range.body) == (206, whole[1000:2000])
    assert origin.count(paths[0]) == 1


# -- 2 and 4. the origin down under load --------------------------------------------------
@pytest.fixture(scope="module")
def outage_origin() -> Iterator[OriginServer]:
    """An origin the outage test stops and starts again."""
    yield from running_origin()


@pytest.fixture(scope="module")
def tiers(
    outage_origin: OriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TieredFleet]:
    """One shield and one edge in front of `outage_origin`."""
    started: list[NodeProcess] = []
    fleet = TieredFleet(
        tmp_path_factory.mktemp("outage"), [outage_origin.url], started, edges=1, shields=1
    )
    try:
        fleet.start()
        yield fleet
    finally:
        for process in reversed(started):
            process.stop()


async def load(
    session: aiohttp.ClientSession, url: str, paths: list[str], until: float
) -> list[tuple[str, Reply | None]]:
    """Requests over `paths` from 8 concurrent clients until `until` (monotonic)."""
    results: list[tuple[str, Reply | None]] = []

    async def client(offset: int) -> None:
        n = offset
        while time.monotonic() < until:
            path = paths[n % len(paths)]
            n += 1
            try:
                results.append((path, await get(session, url, path)))
            except (aiohttp.ClientError, TimeoutError):
                results.append((path, None))

    await asyncio.gather(*(client(i) for i in range(8)))
    return results


async def test_with_the_origin_down_cached_objects_are_served_stale_and_the_log_stays_short(
    tiers: TieredFleet, outage_origin: OriginServer
) -> None:
    cached = [f"/outage/cached/{i}" for i in range(6)]
    never = [f"/outage/never/{i}" for i in range(2)]
    forbidden = "/outage/must-revalidate"
    for path in cached + never:
        cacheable(outage_origin, path, f"body of {path}\n".encode(), "max-age=1")
    cacheable(outage_origin, forbidden, b"strict\n", "max-age=1, must-revalidate")
    edge, shield = tiers.url("edge1"), tiers.config("shield1")
    async with client_session(timeout=30) as session:
        for path in [*cached, forbidden]:
            assert (await get(session, edge, path)).status == 200
        shield_log_before = len(tiers.nodes["shield1"].log().splitlines())
        outage_origin.stop()
        try:
            # the outage outlasts the objects' freshness several times over
            results = await load(session, edge, [*cached, *never], time.monotonic() + 4.0)
            strict = await get(session, edge, forbidden)
        finally:
            outage_origin.restart()
        outcomes: Counter[str] = Counter()
        for path, reply in results:
            if path in cached:
                assert reply is not None and reply.status == 200, (path, reply)
                assert reply.body == f"body of {path}\n".encode()
                if any("stale-when-unreachable" in entry for entry in reply.cache_status):
                    outcomes["stale"] += 1
            else:
                assert reply is not None and reply.status == 502, (path, reply)
                outcomes["error"] += 1
        assert outcomes["stale"] > 10 and outcomes["error"] > 10, outcomes
        print(f"outage: {len(results)} requests, {dict(outcomes)}")
        stale_served = await metric(session, shield.admin_url, "edgeshield_stale_when_unreachable")
    assert stale_served > 0
    # must-revalidate forbids a stale answer (RFC 9111 4.2.4)
    assert strict.status in (502, 504), strict
    outage_lines = tiers.nodes["shield1"].log().splitlines()[shield_log_before:]
    origin_lines = [line for line in outage_lines if "origin" in line]
    assert len(results) > 200
    print("shield log during the outage:", origin_lines)
    assert len(origin_lines) <= 5, origin_lines


async def test_an_edge_serves_stale_when_its_shield_says_the_origin_is_unreachable(
    tiers: TieredFleet, outage_origin: OriginServer
) -> None:
    path, failing = "/outage/edge-only", "/outage/answers-503"
    cacheable(outage_origin, path, b"kept at the edge\n", "max-age=1")
    cacheable(outage_origin, failing, b"good\n", "max-age=1")
    edge, shield = tiers.url("edge1"), tiers.config("shield1")
    async with client_session(timeout=30) as session:
        for name in (path, failing):
            assert (await get(session, edge, name)).status == 200
        # the shield forgets everything; then the origin goes away
        tiers.kill("shield1")
        shutil.rmtree(shield.cache_dir)
        tiers.restart("shield1")
        outage_origin.stop()
        try:
            replies: list[Reply] = []

            async def shield_found_the_origin_unreachable() -> bool:
                reply = await get(session, edge, path)
                replies.append(reply)
                assert (reply.status, reply.body) == (200, b"kept at the edge\n"), reply
                # the edge asked the shield, which had nothing and could not reach
                # the origin: the edge's stale copy answers
                return await metric(session, shield.admin_url, "edgeshield_upstream_errors") > 0

            await eventually(shield_found_the_origin_unreachable, "an upstream error at the shield")
            cache_status = replies[-1].cache_status
            assert "detail=stale-when-unreachable" in cache_status[-1], cache_status
        finally:
            outage_origin.restart()
        # an origin that answers 5xx is not unreachable: no stale without stale-if-error
        outage_origin.route(failing, status=503, body=b"origin says no\n")
        answers: list[Reply] = []

        async def origin_refusal_reaches_the_client() -> bool:
            answers.append(await get(session, edge, failing))
            return answers[-1].status != 200

        await eventually(origin_refusal_reaches_the_client, "the 503 to reach the client", 10)
        assert (answers[-1].status, answers[-1].body) == (503, b"origin says no\n")
