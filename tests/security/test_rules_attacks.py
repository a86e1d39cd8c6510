"""A hostile client against the traffic rules of a real edge (a real process).

Each test is an attempt to get past a rule: a PURGE with forged forwarding fields or
a guessed secret, a rate limit dodged with forged client addresses, a deny rule
dodged with encodings, dot segments, doubled slashes and absolute-form targets, and
a redirect used to inject header lines. Requests go over raw sockets where the
client library would tidy them; each test asserts what the origin saw.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fleet_runner import HOST, TieredFleet, client_session, get
from tests.support.processes import NodeProcess
from tests.support.raw_client import EchoOrigin, parse_response, raw_request

pytestmark = pytest.mark.timeout(60)

CACHEABLE = {"Cache-Control": "max-age=300", "Content-Type": "text/plain"}
RULES = """
purge_method = true
purge_method_sources = ["127.0.0.2/32"]

[[services.rules]]
match = { path_prefix = "/admin" }
respond = { status = 403, body = "no" }

[[services.rules]]
match = { path_prefix = "/old/" }
redirect = { to = "https://www.example.com/new$path$query", status = 302 }

[[services.rate_limits]]
match = { path_prefix = "/limited/" }
key = "client_ip"
rate = "1/m"
burst = 2
"""


@pytest.fixture(scope="module")
def origin() -> Iterator[EchoOrigin]:
    """The echoing origin, shared by the module's tests (each uses its own paths)."""
    server = EchoOrigin().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def edge(origin: EchoOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One edge (no shields) with the module's rules; its traffic address."""
    started: list[NodeProcess] = []
    fleet = TieredFleet(
        tmp_path_factory.mktemp("rules-attacks"),
        [origin.url],
        started,
        edges=1,
        shields=0,
        service_extra='health_check_path = "/healthz"\n' + RULES,
    )
    try:
        fleet.start()
        yield fleet.config("edge1").listen
    finally:
        for node in reversed(started):
            node.stop()


def raw(method: str, target: str, extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()


async def test_purge_with_forged_forwarding_fields_is_refused(
    edge: str, origin: EchoOrigin
) -> None:
    origin.routes["/keep"] = CACHEABLE
    async with client_session() as session:
        await get(session, f"http://{edge}", "/keep")
    forged = (
        "X-Forwarded-For: 127.0.0.2\r\nForwarded: for=127.0.0.2\r\nX-Real-IP: 127.0.0.2\r\n"
        "Authorization: Bearer \r\n"
    )
    for extra in (forged, "Authorization: Bearer test-node\r\n", "Authorization: Basic eA==\r\n"):
        reply = parse_response(await raw_request(edge, raw("PURGE", "/keep", extra)))
        assert reply.status == 403
    async with client_session() as session:
        still = await get(session, f"http://{edge}", "/keep")
    assert still.cache_status[-1].startswith("edge1; hit")
    assert len(origin.requests_for("/keep")) == 1


async def test_purge_is_never_forwarded_to_the_origin(edge: str, origin: EchoOrigin) -> None:
    origin.routes["/p"] = CACHEABLE
    await raw_request(edge, raw("PURGE", "/p"))
    await raw_request(edge, raw("PURGE", f"http://{HOST}/p"))
    assert origin.requests_for("/p") == []


async def test_a_deny_rule_is_not_dodged_by_the_spelling_of_the_path(
    edge: str, origin: EchoOrigin
) -> None:
    origin.routes["/admin"] = CACHEABLE
    origin.routes["/admin/x"] = CACHEABLE
    for target in (
        "/admin",
        "/%61dmin",
        "/%61%64%6D%69%6E/x",
        "/./admin/x",
        "/foo/../admin/x",
        "//admin/x",
        "/.//admin",
        f"http://{HOST}/admin/x",
        "/admin?x=1",
    ):
        reply = parse_response(await raw_request(edge, raw("GET", target)))
        assert reply.status == 403, target
    assert origin.requests_for("/admin") == [] and origin.requests_for("/admin/x") == []


async def test_a_rate_limit_is_not_dodged_with_forged_client_addresses(
    edge: str, origin: EchoOrigin
) -> None:
    origin.routes["/limited/x"] = {"Cache-Control": "no-store"}
    statuses = []
    for i in range(6):
        forged = f"X-Forwarded-For: 10.0.0.{i}\r\nForwarded: for=10.0.0.{i}\r\n"
        reply = parse_response(await raw_request(edge, raw("GET", "/limited/x", forged)))
        statuses.append(reply.status)
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert len(origin.requests_for("/limited/x")) == 2


async def test_a_redirect_cannot_be_made_to_carry_header_lines(edge: str) -> None:
    reply = parse_response(
        await raw_request(edge, raw("GET", "/old/%0d%0aSet-Cookie:%20a=1?%0d%0aX-Evil:%201"))
    )
    assert reply.status == 302
    assert "Set-Cookie" not in reply.headers and "X-Evil" not in reply.headers
    location = reply.headers["Location"]
    assert "\r" not in location and "\n" not in location
    assert location.startswith("https://www.example.com/new/old/")


async def test_a_redirect_goes_to_the_configured_host_whatever_the_host_header(
    edge: str,
) -> None:
    data = b"GET /old/x HTTP/1.1\r\nHost: evil.example.net\r\n\r\n"
    reply = parse_response(await raw_request(edge, data))
    assert reply.status == 421  # a host the fleet does not serve never reaches the rules
