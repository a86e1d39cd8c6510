"""Traffic rules end to end: a real shield and edge (processes) and real origins.

One fleet for the module: an edge in front of a shield, three origins (main, canary,
green) and a service whose rules exercise every kind of action. Counts at the
origins say what went upstream; Cache-Status says what each tier did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet_runner import TieredFleet, client_session, get
from tests.support.origin import OriginServer
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

RULES = """
health_check_interval = 0.2
purge_method = true
purge_method_sources = ["127.0.0.2/32"]

[[services.rules]]
match = { path_prefix = "/ttl/" }
ttl = "1h"

[[services.rules]]
match = { path_prefix = "/bypass/" }
bypass_cache = true

[[services.rules]]
match = { path_prefix = "/bypass/" }
set_response_headers = { "X-Bypassed" = "yes" }

[[services.rules]]
match = { path_prefix = "/hdr/" }
set_response_headers = { "X-Rule" = "on" }
remove_response_headers = ["X-Secret"]
set_request_headers = { "X-From-Edge" = "yes" }
remove_request_headers = ["X-Drop-Me"]

[[services.rules]]
match = { path_prefix = "/old/" }
redirect = { to = "https://www.example.com/new$path", status = 301 }

[[services.rules]]
match = { path_prefix = "/admin/", methods = ["GET", "POST"] }
respond = { status = 403, body = "forbidden by rule" }

[[services.rules]]
match = { path_prefix = "/ua/", header = { name = "User-Agent", value_regex = "(?i)badbot" } }
respond = { status = 403, body = "bots not welcome" }

[[services.rules]]
match = { path_prefix = "/device/" }
cache_key = { include_headers = ["X-Device"] }

[[services.rules]]
match = { path_prefix = "/noquery/" }
cache_key = { ignore_query = true }

[[services.origin_groups]]
name = "main"
origins = ["{main}"]
weight = 90

[[services.origin_groups]]
name = "canary"
origins = ["{canary}"]
weight = 10

[[services.origin_groups]]
name = "green"
origins = ["{green}"]
match = { header = "X-Deploy", value = "green" }

[[services.rate_limits]]
match = { path_prefix = "/limited/" }
key = "client_ip"
rate = "5/s"
burst = 5
action = "reject"

[[services.rate_limits]]
match = { path_prefix = "/delayed/" }
key = "client_ip"
rate = "5/s"
burst = 1
action = "delay"
"""


class Rig:
    """The module's fleet and origins."""

    def __init__(self, fleet: TieredFleet, origins: dict[str, OriginServer]) -> None:
        self.fleet = fleet
        self.origins = origins

    @property
    def edge(self) -> str:
        return self.fleet.url("edge1")

    def route_everywhere(self, path: str, **kwargs: object) -> None:
        """Every origin answers `path`, each with its own name as the body (the 90/10
        split of the groups takes every request no pin or rule sends elsewhere)."""
        for name, origin in self.origins.items():
            origin.route(path, body=name.encode(), **kwargs)

    def count(self, path: str) -> int:
        """Requests for `path` at all the origins together."""
        return sum(origin.count(path) for origin in self.origins.values())


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    origins = {name: OriginServer() for name in ("main", "canary", "green")}
    started: list[NodeProcess] = []
    try:
        for origin in origins.values():
            origin.start()
        extra = RULES
        for name, origin in origins.items():
            extra = extra.replace("{" + name + "}", origin.url)
        root: Path = tmp_path_factory.mktemp("rules")
        fleet = TieredFleet(
            root, [origins["main"].url], started, edges=1, shields=1, service_extra=extra
        ).start()
        yield Rig(fleet, origins)
    finally:
        for node in reversed(started):
            node.stop()
        for origin in origins.values():
            origin.close()


async def test_a_ttl_override_makes_an_uncacheable_answer_cacheable(rig: Rig) -> None:
    rig.route_everywhere("/ttl/page", headers={"Cache-Control": "no-store"})
    async with client_session() as session:
        first = await get(session, rig.edge, "/ttl/page")
        second = await get(session, rig.edge, "/ttl/page")
    assert (first.status, second.status) == (200, 200)
    assert rig.count("/ttl/page") == 1
    assert second.cache_status[-1].startswith("edge1; hit")
    # the override is this CDN's only: clients still see the origin's Cache-Control
    assert second.headers["Cache-Control"] == "no-store"
    assert "CDN-Cache-Control" not in second.headers
    assert "Edgeshield-CDN-Cache-Control" not in second.headers


async def test_a_bypass_path_always_goes_to_the_origin(rig: Rig) -> None:
    rig.route_everywhere("/bypass/x", headers={"Cache-Control": "max-age=300"})
    rig.route_everywhere("/cached/x", headers={"Cache-Control": "max-age=300"})
    async with client_session() as session:
        for _ in range(3):
            bypassed = await get(session, rig.edge, "/bypass/x")
            assert bypassed.status == 200
            assert bypassed.headers.get("X-Bypassed") == "yes"  # relayed answers get rules too
            assert (await get(session, rig.edge, "/cached/x")).status == 200
    assert rig.count("/bypass/x") == 3
    assert rig.count("/cached/x") == 1


async def test_headers_are_set_and_removed_both_ways(rig: Rig) -> None:
    rig.route_everywhere("/hdr/a", headers={"Cache-Control": "max-age=300", "X-Secret": "s3cr3t"})
    pinned = {"X-Deploy": "green"}  # so the one origin that sees it is known
    async with client_session() as session:
        first = await get(session, rig.edge, "/hdr/a", headers={"X-Drop-Me": "1", **pinned})
        hit = await get(session, rig.edge, "/hdr/a", headers=pinned)
    # the request the edge sent (the origin also records the shield's health probes)
    seen = next(h for h in reversed(rig.origins["green"].seen_headers) if "X-Deploy" in h)
    assert seen.get("X-From-Edge") == "yes" and "X-Drop-Me" not in seen
    for reply in (first, hit):
        assert reply.headers.get("X-Rule") == "on"
        assert "X-Secret" not in reply.headers
    assert hit.cache_status[-1].startswith("edge1; hit")  # carried by the stored answer


async def test_a_redirect_rule(rig: Rig) -> None:
    async with client_session() as session:
        reply = await get(session, rig.edge, "/old/page?x=1")
    assert reply.status == 301
    assert reply.headers["Location"] == "https://www.example.com/new/old/page"
    assert rig.count("/old/page?x=1") == 0


async def test_a_respond_rule_answers_403_without_the_origin(rig: Rig) -> None:
    async with client_session() as session:
        reply = await get(session, rig.edge, "/admin/panel")
        dodge = await get(session, rig.edge, "/%61dmin/panel")
    assert (reply.status, reply.body) == (403, b"forbidden by rule")
    assert dodge.status == 403
    assert rig.count("/admin/panel") == 0


async def test_cache_key_includes_a_header_and_can_ignore_the_query(rig: Rig) -> None:
    rig.route_everywhere("/device/page", headers={"Cache-Control": "max-age=300"})
    rig.route_everywhere("/noquery/page", headers={"Cache-Control": "max-age=300"})
    async with client_session() as session:
        for device in ("mobile", "desktop", "mobile", "desktop"):
            reply = await get(session, rig.edge, "/device/page", headers={"X-Device": device})
            assert reply.status == 200
        for query in ("?a=1", "?b=2", ""):
            assert (await get(session, rig.edge, "/noquery/page" + query)).status == 200
    assert rig.count("/device/page") == 2  # one entry per X-Device value
    assert rig.count("/noquery/page") == 1  # fetched without the query, once
    assert rig.count("/noquery/page?a=1") == 0


async def test_a_delay_rate_limit_holds_requests_instead_of_refusing(rig: Rig) -> None:
    rig.route_everywhere("/delayed/x", headers={"Cache-Control": "max-age=300"})
    async with client_session() as session:
        start = time.monotonic()
        replies = await asyncio.gather(*(get(session, rig.edge, "/delayed/x") for _ in range(3)))
        elapsed = time.monotonic() - start
    assert [r.status for r in replies] == [200, 200, 200]
    assert elapsed >= 0.35, elapsed  # the 2nd and 3rd waited 0.2 s each at 5/s


async def test_a_header_condition_is_evaluated_per_request_on_hits(rig: Rig) -> None:
    rig.route_everywhere("/ua/page", headers={"Cache-Control": "max-age=300"})
    async with client_session() as session:
        statuses = []
        for agent in ("Mozilla/5.0", "BadBot/2", "Mozilla/5.0", "xBADBOTx", "curl/8"):
            reply = await get(session, rig.edge, "/ua/page", headers={"User-Agent": agent})
            statuses.append(reply.status)
    assert statuses == [200, 403, 200, 403, 200]
    assert rig.count("/ua/page") == 1  # the allowed ones after the first were hits


async def test_a_90_10_canary_split_over_1000_requests(rig: Rig) -> None:
    rig.route_everywhere("/split", headers={"Cache-Control": "no-store"})
    bodies: list[bytes] = []
    async with client_session(timeout=60) as session:

        async def one() -> None:
            reply = await get(session, rig.edge, "/split")
            assert reply.status == 200
            bodies.append(reply.body)

        for _ in range(50):
            await asyncio.gather(*(one() for _ in range(20)))
    main, canary = rig.origins["main"].count("/split"), rig.origins["canary"].count("/split")
    assert main + canary == 1000 and bodies.count(b"canary") == canary
    assert 0.07 <= canary / 1000 <= 0.13, (main, canary)
    assert rig.origins["green"].count("/split") == 0


async def test_blue_green_switching_by_header(rig: Rig) -> None:
    rig.route_everywhere("/bg", headers={"Cache-Control": "no-store"})
    async with client_session() as session:
        green = [
            (await get(session, rig.edge, "/bg", headers={"X-Deploy": "green"})).body
            for _ in range(20)
        ]
        other = [(await get(session, rig.edge, "/bg")).body for _ in range(20)]
    assert set(green) == {b"green"}
    assert b"green" not in other


async def test_rate_limit_answers_429_with_retry_after_at_the_rate_and_recovers(
    rig: Rig,
) -> None:
    rig.route_everywhere("/limited/x", headers={"Cache-Control": "max-age=300"})
    async with client_session() as session:
        statuses = [(await get(session, rig.edge, "/limited/x")).status for _ in range(5)]
        refused = await get(session, rig.edge, "/limited/x")
        assert statuses == [200] * 5
        assert refused.status == 429 and refused.headers["Retry-After"] == "1"
        other = await get(session, rig.edge, "/cached/x")
        assert other.status == 200  # only the limited path is limited
        refused_at = time.monotonic()

        async def recovered() -> bool:
            return (await get(session, rig.edge, "/limited/x")).status == 200

        await eventually(recovered, "a token again after a 429")
        assert time.monotonic() - refused_at >= 0.1  # one token takes 0.2 s at 5/s
        # hammer for a second: about the rate gets through, never much more
        ok = 0
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            ok += (await get(session, rig.edge, "/limited/x")).status == 200
        elapsed = time.monotonic() - start
        assert ok <= 5 * elapsed + 2, (ok, elapsed)
        assert ok >= 2, (ok, elapsed)


async def test_purge_method_allowed_from_a_listed_cidr_refused_from_others(rig: Rig) -> None:
    rig.route_everywhere("/purgeable", headers={"Cache-Control": "max-age=300"})

    async def purge(local: str) -> int:
        async with (
            client_session(local_address=local) as session,
            session.request(
                "PURGE", rig.edge + "/purgeable", headers={"Host": "www.example.com"}
            ) as response,
        ):
            await response.read()
            return response.status

    async with client_session() as session:
        await get(session, rig.edge, "/purgeable")
        assert (
            (await get(session, rig.edge, "/purgeable")).cache_status[-1].startswith("edge1; hit")
        )
        assert await purge("127.0.0.3") == 403
        assert (
            (await get(session, rig.edge, "/purgeable")).cache_status[-1].startswith("edge1; hit")
        )
        assert await purge("127.0.0.2") == 200
        after = await get(session, rig.edge, "/purgeable")
    assert not after.cache_status[-1].startswith("edge1; hit"), after.cache_status


async def test_purge_method_with_the_node_secret(rig: Rig) -> None:
    from tests.support.fleetfile import TEST_NODE_SECRET

    async with client_session() as session:
        for auth, expected in (("Bearer wrong", 403), (f"Bearer {TEST_NODE_SECRET}", 200)):
            async with session.request(
                "PURGE",
                rig.edge + "/purgeable",
                headers={"Host": "www.example.com", "Authorization": auth},
            ) as response:
                assert response.status == expected


async def test_an_unhealthy_canarys_share_goes_to_the_main_group(rig: Rig) -> None:
    rig.route_everywhere("/health-split", headers={"Cache-Control": "no-store"})
    canary = rig.origins["canary"]
    canary.stop()
    try:
        async with client_session() as session:

            async def canary_passed_over() -> bool:
                replies = [await get(session, rig.edge, "/health-split") for _ in range(30)]
                return all(r.status == 200 for r in replies)

            await eventually(canary_passed_over, "the canary group marked unhealthy")
            before = rig.origins["main"].count("/health-split")
            replies = [await get(session, rig.edge, "/health-split") for _ in range(200)]
        wrong = [(r.status, r.body[:80], r.cache_status) for r in replies if r.body != b"main"]
        assert not wrong and all(r.status == 200 for r in replies), wrong
        assert rig.origins["main"].count("/health-split") - before == 200
    finally:
        canary.restart()
