"""A hostile client against a real fleet: origin → shield → edge, all real processes.

Each test is an attack from the hardening review: framing that desyncs the upstream
connection, forged forwarding fields, hop-by-hop nomination of a Vary field, cache
deception through heuristic freshness, absolute-form targets, the invalidation race
after an unsafe method, dot segments, and error bodies that say too much. Malformed
or unusual framing goes over raw sockets; everything asserts what the origin saw.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from tests.support.fleet_runner import HOST, TieredFleet, client_session, get
from tests.support.ports import free_port
from tests.support.processes import NodeProcess
from tests.support.raw_client import EchoOrigin, parse_response, raw_exchange, raw_request

pytestmark = pytest.mark.timeout(60)

#: the address the trusted proxy's requests come from (see the fleet's [security])
TRUSTED_PROXY = "127.0.0.3"
#: a host of a second service whose origin refuses connections
DOWN_HOST = "down.example.com"
CACHEABLE = {"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def origin() -> Iterator[EchoOrigin]:
    """The echoing origin, shared by the module's tests (each uses its own paths)."""
    server = EchoOrigin().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fleet(origin: EchoOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TieredFleet]:
    """One shield and two edges; a second service whose origin is down; one trusted proxy."""
    started: list[NodeProcess] = []
    down_service = (
        f'\n[[services]]\nname = "down"\nhosts = ["{DOWN_HOST}"]\n'
        f'origins = ["http://127.0.0.1:{free_port()}"]\n'
    )
    tiered = TieredFleet(
        tmp_path_factory.mktemp("client-requests"),
        [origin.url],
        started,
        edges=2,
        shields=1,
        service_extra='health_check_path = "/healthz"\n' + down_service,
    )
    text = tiered.path.read_text()
    tiered.path.write_text(text + f'\n[security]\ntrusted_proxies = ["{TRUSTED_PROXY}/32"]\n')
    try:
        yield tiered.start()
    finally:
        for node in reversed(started):
            node.stop()


def edge(fleet: TieredFleet, name: str = "edge1") -> str:
    """host:port of an edge's traffic listener."""
    return fleet.config(name).listen


def echo(body: bytes) -> dict[str, object]:
    """The origin's account of the request an answer was made for."""
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


def own_status(cache_status: str) -> str:
    """The last (edge's) entry of a Cache-Status value."""
    return cache_status.rsplit(",", 1)[-1]


# -- 1. framing: a body on GET/HEAD never desyncs the upstream connection -----------------
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_body_on_get_or_head_is_refused_and_the_next_requests_stay_in_step(
    fleet: TieredFleet, origin: EchoOrigin, method: str
) -> None:
    path = f"/framing/{method.lower()}"
    origin.routes[path] = CACHEABLE
    for i in range(5):
        origin.routes[f"{path}/next{i}"] = CACHEABLE
    async with client_session() as session:
        # the shield has the object, so it answers edge1 at once (nothing waits for a body)
        assert (await get(session, fleet.url("edge2"), path)).status == 200
        answer = await raw_exchange(
            edge(fleet),
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 24\r\n\r\n".encode()
            + b"GET /smuggled HTTP/1.1\r\n",
        )
        response = parse_response(answer)
        assert response.status == 400, answer[:300]
        assert response.headers.get("Connection", "").lower() == "close"
        assert len(response.body) < 100
        # edge1's connection to the shield (and the shield's to the origin) still
        # frame requests as they are: every following miss is answered whole
        for i in range(5):
            reply = await get(session, fleet.url("edge1"), f"{path}/next{i}")
            assert reply.status == 200, (reply.status, reply.body[:200])
            assert echo(reply.body)["target"] == f"{path}/next{i}"
    assert origin.counts["/smuggled"] == 0
    assert all(seen.body == b"" for seen in origin.requests_for(path))
    assert all("Content-Length" not in seen.headers for seen in origin.requests_for(path))


@pytest.mark.parametrize(
    "framing, body",
    [
        ("Content-Length: 5", b"hello"),
        ("Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n"),
    ],
)
async def test_a_delete_body_goes_upstream_with_framing_that_matches_it(
    fleet: TieredFleet, origin: EchoOrigin, framing: str, body: bytes
) -> None:
    path = f"/framing/delete-{framing.split(':')[0].lower()}"
    origin.routes[path] = {"Content-Type": "application/octet-stream"}
    answer = await raw_exchange(
        edge(fleet),
        f"DELETE {path} HTTP/1.1\r\nHost: {HOST}\r\n{framing}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )
    response = parse_response(answer)
    assert response.status == 200, answer[:300]
    (seen,) = origin.requests_for(path)
    assert seen.body == b"hello"
    length = seen.headers.get("Content-Length")
    assert length is None or length == "5"


# -- 4. forwarding fields are ours, not the client's ------------------------------------
FORGED = {
    "X-Forwarded-For": "203.0.113.66",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/evil",
    "X-Real-IP": "203.0.113.66",
    "True-Client-IP": "203.0.113.66",
    "Forwarded": 'for=203.0.113.66;host="evil.example.net";proto=https',
    "X-Edgeshield-Node": "forged",
}


async def test_client_forwarding_fields_are_dropped_and_rewritten(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    origin.routes["/fwd/page"] = CACHEABLE
    async with client_session(local_address="127.0.0.2") as attacker:
        first = await get(attacker, fleet.url("edge1"), "/fwd/page", headers=FORGED)
    assert first.status == 200
    (seen,) = origin.requests_for("/fwd/page")
    # the client's own address first, then the edge's (the shield trusts the edge)
    assert seen.headers["X-Forwarded-For"] == "127.0.0.2, 127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "http"
    forwarded = seen.headers["Forwarded"]
    assert forwarded.startswith(f"for=127.0.0.2;host={HOST};proto=http, for=127.0.0.1")
    for name in ("X-Forwarded-Port", "X-Forwarded-Prefix", "X-Real-IP", "True-Client-IP"):
        assert name not in seen.headers, name
    assert "X-Edgeshield-Node" not in seen.headers  # the node token never leaves the CDN
    assert "203.0.113.66" not in str(dict(seen.headers)) and "evil" not in forwarded
    # a clean client gets the page built from our values, not the attacker's
    async with client_session() as clean:
        reply = await get(clean, fleet.url("edge1"), "/fwd/page")
    assert "hit" in own_status(reply.headers["Cache-Status"])
    assert echo(reply.body)["proto"] == "http"


async def test_a_forged_node_token_does_not_make_the_shield_trust_a_client(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    origin.routes["/fwd/shield"] = CACHEABLE
    shield = fleet.config(fleet.shield_names[0]).listen
    answer = await raw_exchange(
        shield,
        f"GET /fwd/shield HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n".encode()
        + "".join(f"{name}: {value}\r\n" for name, value in FORGED.items()).encode()
        + b"\r\n",
    )
    assert parse_response(answer).status == 200, answer[:300]
    (seen,) = origin.requests_for("/fwd/shield")
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert "X-Real-IP" not in seen.headers and "X-Edgeshield-Node" not in seen.headers


async def test_a_trusted_proxy_keeps_its_forwarding_fields(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    origin.routes["/fwd/trusted"] = CACHEABLE
    async with client_session(local_address=TRUSTED_PROXY) as proxy:
        reply = await get(
            proxy,
            fleet.url("edge1"),
            "/fwd/trusted",
            headers={"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"},
        )
    assert reply.status == 200
    (seen,) = origin.requests_for("/fwd/trusted")
    assert seen.headers["X-Forwarded-For"] == f"198.51.100.7, {TRUSTED_PROXY}, 127.0.0.1"
    assert seen.headers["X-Forwarded-Proto"] == "https"


# -- 5. Connection cannot strip a field the answer varies on -----------------------------
async def test_connection_nominating_cookie_does_not_store_an_anonymous_page_as_alices(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    origin.routes["/vary/cookie"] = {**CACHEABLE, "Vary": "Cookie"}
    answer = await raw_exchange(
        edge(fleet),
        f"GET /vary/cookie HTTP/1.1\r\nHost: {HOST}\r\nCookie: u=alice\r\n".encode()
        + b"Connection: close, Cookie\r\n\r\n",
    )
    # the origin did not get the cookie (it was hop-by-hop), so the answer is anonymous
    assert echo(parse_response(answer).body)["cookie"] is None
    async with client_session() as session:
        alice = await get(
            session, fleet.url("edge1"), "/vary/cookie", headers={"Cookie": "u=alice"}
        )
        anonymous = await get(session, fleet.url("edge1"), "/vary/cookie")
    assert echo(alice.body)["cookie"] == "u=alice"
    assert echo(anonymous.body)["cookie"] is None
    assert "hit" in own_status(anonymous.headers["Cache-Status"])


# -- 6. cache deception: no heuristic freshness for credentialed requests -----------------
async def test_a_personal_page_under_a_static_looking_path_is_not_stored(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    a_month_ago = formatdate(time.time() - 30 * 86400, usegmt=True)
    origin.routes["/account.php/x.css"] = {"Last-Modified": a_month_ago}
    origin.routes["/static/app.css"] = {**CACHEABLE, "Last-Modified": a_month_ago}
    async with client_session() as session:
        victim = await get(
            session,
            fleet.url("edge1"),
            "/account.php/x.css",
            headers={"Cookie": "session=alice"},
        )
        assert echo(victim.body)["cookie"] == "session=alice"
        attacker = await get(session, fleet.url("edge1"), "/account.php/x.css")
        assert echo(attacker.body)["cookie"] is None
        # explicit freshness still caches, cookie or not
        await get(session, fleet.url("edge1"), "/static/app.css", headers={"Cookie": "a=b"})
        again = await get(session, fleet.url("edge1"), "/static/app.css")
    assert origin.counts["/account.php/x.css"] == 2
    assert origin.counts["/static/app.css"] == 1
    assert "hit" in own_status(again.headers["Cache-Status"])


# -- 8. absolute-form request targets -----------------------------------------------------
async def test_an_absolute_form_target_is_fetched_and_keyed_in_origin_form(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    origin.routes["/abs/x"] = CACHEABLE
    answer = await raw_exchange(
        edge(fleet),
        f"GET http://{HOST}/abs/x?q=1 HTTP/1.1\r\nHost: other.example.net\r\n".encode()
        + b"Connection: close\r\n\r\n",
    )
    response = parse_response(answer)
    assert response.status == 200, answer[:300]
    assert echo(response.body)["target"] == "/abs/x?q=1"
    async with client_session() as session:
        reply = await get(session, fleet.url("edge1"), "/abs/x?q=1")
    assert "hit" in own_status(reply.headers["Cache-Status"])
    assert origin.counts["/abs/x"] == 1


async def test_an_absolute_form_target_for_another_host_is_421(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    answer = await raw_exchange(
        edge(fleet),
        f"GET http://evil.example.net/abs/y HTTP/1.1\r\nHost: {HOST}\r\n".encode()
        + b"Connection: close\r\n\r\n",
    )
    assert parse_response(answer).status == 421, answer[:300]
    assert origin.counts["/abs/y"] == 0


# -- 10. unsafe methods invalidate before their answer leaves -----------------------------
async def test_no_get_after_a_successful_post_is_a_hit_of_the_old_object(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    origin.routes["/inv/page"] = CACHEABLE
    async with client_session() as session:
        await get(session, fleet.url("edge1"), "/inv/page")
    request = f"GET /inv/page HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    for round_ in range(50):
        # a keep-alive client: it has the answer once the last byte is in, and asks again
        post = await raw_request(
            edge(fleet),
            f"POST /inv/page HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\nok".encode(),
        )
        assert parse_response(post).status == 200
        after = parse_response(await raw_exchange(edge(fleet), request))
        assert "hit" not in own_status(after.headers["Cache-Status"]), (round_, after.headers)
        assert echo(after.body)["method"] == "GET"
    assert len([s for s in origin.requests_for("/inv/page") if s.method == "GET"]) == 51


async def test_an_unsafe_method_invalidates_its_content_location_on_the_same_host(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    origin.routes["/inv/other"] = CACHEABLE
    origin.routes["/inv/form"] = {"Content-Location": f"http://{HOST}/inv/other"}
    async with client_session() as session:
        await get(session, fleet.url("edge1"), "/inv/other")
        async with session.post(
            fleet.url("edge1") + "/inv/form", headers={"Host": HOST}, data=b"x"
        ) as response:
            assert response.status == 200
        reply = await get(session, fleet.url("edge1"), "/inv/other")
    assert "hit" not in own_status(reply.headers["Cache-Status"])
    assert origin.counts["/inv/other"] == 2


# -- 12. dot segments ---------------------------------------------------------------------
async def test_dot_segments_are_one_key_and_the_origin_sees_the_normalised_path(
    fleet: TieredFleet, origin: EchoOrigin
) -> None:
    origin.routes["/dots/x"] = CACHEABLE
    spellings = ["/dots/x", "/./dots/x", "/dots/./x", "/dots/%2e%2e/dots/x", "/dots/y/../x"]
    statuses = []
    for target in spellings:
        answer = await raw_exchange(
            edge(fleet),
            f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
        )
        response = parse_response(answer)
        assert response.status == 200, (target, answer[:300])
        statuses.append(own_status(response.headers["Cache-Status"]))
    assert [seen.target for seen in origin.seen if "dots" in seen.target] == ["/dots/x"]
    assert all("hit" in status for status in statuses[1:]), statuses


# -- error bodies -------------------------------------------------------------------------
async def test_an_unreachable_origin_is_a_short_502_naming_no_address(
    fleet: TieredFleet,
) -> None:
    async with client_session() as session:
        reply = await get(session, fleet.url("edge1"), "/anything", host=DOWN_HOST)
    assert reply.status == 502
    assert b"origin unreachable" in reply.body
    assert len(reply.body) < 100, reply.body
    shown = reply.body.decode() + str(dict(reply.headers))
    assert "127.0.0.1" not in shown and "Errno" not in shown, shown


async def test_a_request_the_parser_refuses_is_not_echoed_back(fleet: TieredFleet) -> None:
    junk = b"A" * 4000
    for request in (
        b"G\x01T /" + junk + b" HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX-Bad\x01: " + junk + b"\r\n\r\n",
    ):
        response = parse_response(await raw_exchange(edge(fleet), request))
        assert response.status == 400
        assert len(response.body) < 100, response.body[:200]
        assert b"AAAA" not in response.body
