"""RFC 9110 / 9111 / 9213 / 8297 conformance through a real edge process.

Each test scripts the demo origin for a path of its own, asks a real edge, and
asserts what the client saw and how many requests reached the origin. One edge with
the default service settings and one with `honor_request_cache_control`,
`early_hints` and a larger `compress_min_size` serve the whole module.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from edge.cache.dates import format_http_date
from tests.support.fleet_runner import TieredFleet
from tests.support.fleetfile import FleetSpec
from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.raw_client import raw_exchange
from tests.support.waiting import eventually

HOST = "www.example.com"


class Edge:
    """A started edge process and its address."""

    def __init__(self, root: Path, origin: OriginServer, service_extra: str) -> None:
        spec = FleetSpec(
            root / "fleet",
            origins=[origin.url],
            service_extra='health_check_path = "/healthz"\n' + service_extra,
        )
        config = spec.write()
        self.listen = re.findall(r'^listen = "([^"]+)"', config.read_text(), re.M)[0]
        self.base = f"http://{self.listen}"
        self.node = NodeProcess(
            ["edge", "--config", str(config), "--node", "edge1"], root / "edge.log"
        ).start()

    def stop(self) -> None:
        self.node.stop()


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    yield from running_origin()


@pytest.fixture(scope="module")
def edges(
    tmp_path_factory: pytest.TempPathFactory, origin: OriginServer
) -> Iterator[tuple[Edge, Edge]]:
    started: list[Edge] = []
    try:
        plain = Edge(tmp_path_factory.mktemp("plain"), origin, "")
        started.append(plain)
        honouring = Edge(
            tmp_path_factory.mktemp("honouring"),
            origin,
            "honor_request_cache_control = true\nearly_hints = true\ncompress_min_size = 2000\n",
        )
        started.append(honouring)
        for edge in started:
            edge.node.wait_listening(edge.listen)
        yield plain, honouring
    finally:
        for edge in started:
            edge.stop()


@pytest.fixture
def edge(edges: tuple[Edge, Edge]) -> Edge:
    return edges[0]


@pytest.fixture
def honouring(edges: tuple[Edge, Edge]) -> Edge:
    return edges[1]


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def ask(
    client: aiohttp.ClientSession,
    edge: Edge,
    path: str,
    method: str = "GET",
    **headers: str,
) -> tuple[int, CIMultiDict[str], bytes]:
    hdrs = {"Host": HOST, **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with client.request(
        method, edge.base + path, headers=hdrs, allow_redirects=False
    ) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


def hit(headers: CIMultiDict[str]) -> bool:
    member = headers.get("Cache-Status", "").split(",")[-1]
    return "hit" in [param.strip() for param in member.split(";")]


# -- RFC 9111 5.1 -------------------------------------------------------------------------
async def test_a_list_age_does_not_make_a_response_fresh(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route("/c/age-list", headers={"Cache-Control": "max-age=3600", "Age": "7200, 0"})
    await ask(client, edge, "/c/age-list")
    _, headers, _ = await ask(client, edge, "/c/age-list")
    assert not hit(headers)
    assert origin.count("/c/age-list") == 2


# -- RFC 9110 6.6.1, RFC 9111 4 -------------------------------------------------------------
async def test_a_hit_carries_the_stored_date(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    dated = format_http_date(time.time() - 100)
    origin.route("/c/dated", headers={"Cache-Control": "max-age=3600", "Date": dated})
    _, first, _ = await ask(client, edge, "/c/dated")
    _, second, _ = await ask(client, edge, "/c/dated")
    assert hit(second)
    assert first["Date"] == second["Date"] == dated
    assert int(second["Age"]) >= 100


# -- RFC 9110 15.2, RFC 8297 ----------------------------------------------------------------
async def test_a_revalidation_sends_early_hints_from_the_stored_links(
    client: aiohttp.ClientSession, honouring: Edge, origin: OriginServer
) -> None:
    origin.route(
        "/c/hinted",
        headers={
            "Cache-Control": "no-cache",
            "Link": '</style.css>; rel=preload; as=style, </next>; rel="next"',
        },
        body=b"<html></html>",
        etag='"h1"',
    )
    await ask(client, honouring, "/c/hinted")
    raw = await raw_exchange(
        honouring.listen,
        f"GET /c/hinted HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
    )
    informational, _, final = raw.partition(b"\r\n\r\n")
    assert informational.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert b"Link: </style.css>; rel=preload; as=style" in informational
    assert b"next" not in informational
    assert final.startswith(b"HTTP/1.1 200 ")
    assert origin.count("/c/hinted") == 2


async def test_early_hints_are_off_by_default(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route(
        "/c/unhinted",
        headers={"Cache-Control": "no-cache", "Link": "</s.css>; rel=preload"},
        etag='"u1"',
    )
    await ask(client, edge, "/c/unhinted")
    raw = await raw_exchange(
        edge.listen,
        f"GET /c/unhinted HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert raw.startswith(b"HTTP/1.1 200 ")


async def test_an_origins_early_hints_are_forwarded_and_never_stored(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route(
        "/c/origin-hints",
        headers={"Cache-Control": "max-age=600"},
        body=b"final",
        early_hints=("</o.css>; rel=preload; as=style",),
    )
    raw = await raw_exchange(
        edge.listen,
        f"GET /c/origin-hints HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
    )
    informational, _, final = raw.partition(b"\r\n\r\n")
    assert informational.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert b"Link: </o.css>; rel=preload; as=style" in informational
    assert final.startswith(b"HTTP/1.1 200 ") and final.endswith(b"final")
    # the stored answer is the final one; a hit sends no 1xx
    raw = await raw_exchange(
        edge.listen,
        f"GET /c/origin-hints HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"final")
    assert origin.count("/c/origin-hints") == 1


# -- RFC 9111 4.4 ---------------------------------------------------------------------------
async def test_an_unsafe_method_of_any_name_invalidates(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route("/c/msearch", headers={"Cache-Control": "max-age=600"}, body=b"x")
    await ask(client, edge, "/c/msearch")
    _, headers, _ = await ask(client, edge, "/c/msearch")
    assert hit(headers)
    status, _, _ = await ask(client, edge, "/c/msearch", method="M-SEARCH")
    assert status == 200
    _, headers, _ = await ask(client, edge, "/c/msearch")
    assert not hit(headers)
    assert origin.count("/c/msearch") == 3


async def test_location_and_content_location_are_invalidated(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    for path in ("/c/loc-a", "/c/loc-b", "/c/loc-c"):
        origin.route(path, headers={"Cache-Control": "max-age=600"}, body=b"x")
        await ask(client, edge, path)
    origin.route(
        "/c/form",
        status=201,
        headers={
            "Location": "/c/loc-a",
            "Content-Location": f"http://{HOST}/c/loc-b",
        },
    )
    # another host's URI is never invalidated (RFC 9111 4.4)
    origin.route("/c/form2", status=303, headers={"Location": "http://other.example/c/loc-c"})
    assert (await ask(client, edge, "/c/form", method="POST"))[0] == 201
    assert (await ask(client, edge, "/c/form2", method="POST"))[0] == 303
    assert not hit((await ask(client, edge, "/c/loc-a"))[1])
    assert not hit((await ask(client, edge, "/c/loc-b"))[1])
    assert hit((await ask(client, edge, "/c/loc-c"))[1])


# -- RFC 9110 8.4 ---------------------------------------------------------------------------
async def test_an_unknown_content_coding_is_stored_and_passed_as_is(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    coded = bytes(range(256)) * 8
    origin.route(
        "/c/x-coded",
        headers={
            "Cache-Control": "max-age=600",
            "Content-Encoding": "x-custom",
            "Content-Type": "text/html",
        },
        body=coded,
    )
    for accept in ("gzip, br", "identity"):
        status, headers, body = await ask(client, edge, "/c/x-coded", Accept_Encoding=accept)
        assert status == 200
        assert headers["Content-Encoding"] == "x-custom"
        assert body == coded
        assert "accept-encoding" not in headers.get("Vary", "").lower()
    assert origin.count("/c/x-coded") == 1


# -- RFC 9110 12.5.5 ------------------------------------------------------------------------
async def test_vary_accept_encoding_only_when_the_answer_depends_on_it(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    text = b"the same sentence again and again. " * 200
    origin.route(
        "/c/tiny",
        headers={"Cache-Control": "max-age=600", "Content-Type": "text/plain"},
        body=b"hi",
    )
    origin.route(
        "/c/tiny-foo",
        headers={"Cache-Control": "max-age=600", "Content-Type": "text/plain", "Vary": "Foo"},
        body=b"hi",
    )
    origin.route(
        "/c/text", headers={"Cache-Control": "max-age=600", "Content-Type": "text/plain"}, body=text
    )
    for _ in range(2):
        _, headers, _ = await ask(client, edge, "/c/tiny", Accept_Encoding="gzip")
        assert "Vary" not in headers
        _, headers, _ = await ask(client, edge, "/c/tiny-foo", Accept_Encoding="gzip")
        assert headers.getall("Vary") == ["Foo"]
        _, headers, _ = await ask(client, edge, "/c/text", Accept_Encoding="gzip")
        assert "accept-encoding" in headers["Vary"].lower()


async def test_the_compression_minimum_is_a_service_setting(
    client: aiohttp.ClientSession, honouring: Edge, origin: OriginServer
) -> None:
    text = b"0123456789abcdef" * 100  # 1600 bytes, under this service's 2000
    origin.route(
        "/c/medium",
        headers={"Cache-Control": "max-age=600", "Content-Type": "text/plain"},
        body=text,
    )
    for _ in range(2):
        _, headers, body = await ask(client, honouring, "/c/medium", Accept_Encoding="gzip")
        assert "Content-Encoding" not in headers and "Vary" not in headers
        assert body == text


# -- RFC 9213 2 -----------------------------------------------------------------------------
async def test_cdn_cache_control_is_passed_on(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route(
        "/c/targeted",
        headers={
            "Cache-Control": "max-age=1",
            "CDN-Cache-Control": "max-age=600",
            "Surrogate-Control": "max-age=600",
        },
    )
    for _ in range(2):
        _, headers, _ = await ask(client, edge, "/c/targeted")
        assert headers["CDN-Cache-Control"] == "max-age=600"
        assert "Surrogate-Control" not in headers
    assert origin.count("/c/targeted") == 1


# -- RFC 9111 3, RFC 9110 15.1 --------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "status", "headers"),
    [
        ("/c/s201", 201, {"Cache-Control": "max-age=600"}),
        ("/c/s403", 403, {"Cache-Control": "max-age=600"}),
        ("/c/s503", 503, {"Cache-Control": "max-age=600"}),
        ("/c/s404-lm", 404, {"Last-Modified": format_http_date(time.time() - 86400)}),
        ("/c/s410-lm", 410, {"Last-Modified": format_http_date(time.time() - 86400)}),
    ],
)
async def test_final_statuses_with_freshness_are_stored(
    client: aiohttp.ClientSession,
    edge: Edge,
    origin: OriginServer,
    path: str,
    status: int,
    headers: dict[str, str],
) -> None:
    origin.route(path, status=status, headers=headers, body=b"answer")
    assert (await ask(client, edge, path))[0] == status
    got, response_headers, body = await ask(client, edge, path)
    assert (got, body) == (status, b"answer") and hit(response_headers)
    assert origin.count(path) == 1


# -- RFC 9110 14.2 on a miss ----------------------------------------------------------------
async def test_a_range_on_a_miss_gets_206_and_the_whole_object_is_stored(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    body = bytes(range(256)) * 40
    origin.route(
        "/c/ranged",
        headers={"Cache-Control": "max-age=600", "Content-Type": "application/octet-stream"},
        body=body,
    )
    status, headers, part = await ask(client, edge, "/c/ranged", Range="bytes=100-199")
    assert status == 206 and part == body[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(body)}"
    assert "Range" not in origin.seen_headers[-1]

    async def whole_is_a_hit() -> bool:
        # the fill commits just after the range's last byte left
        status, headers, whole = await ask(client, edge, "/c/ranged")
        assert status == 200 and whole == body
        return hit(headers)

    await eventually(whole_is_a_hit, "the whole object stored")
    assert origin.count("/c/ranged") == 1


async def test_a_range_on_a_miss_of_a_chunked_body_gets_206(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    body = bytes(range(256)) * 40
    origin.route(
        "/c/ranged-chunked",
        headers={"Cache-Control": "max-age=600", "Content-Type": "application/octet-stream"},
        body=body,
        chunked=True,
    )
    status, headers, part = await ask(client, edge, "/c/ranged-chunked", Range="bytes=-10")
    assert status == 206 and part == body[-10:]
    assert headers["Content-Range"] == f"bytes {len(body) - 10}-{len(body) - 1}/{len(body)}"
    assert origin.count("/c/ranged-chunked") == 1


async def test_an_origins_206_is_passed_through_unstored(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route(
        "/c/partial",
        status=206,
        headers={"Cache-Control": "max-age=600", "Content-Range": "bytes 0-3/10"},
        body=b"0123",
    )
    for _ in range(2):
        status, headers, body = await ask(client, edge, "/c/partial")
        assert (status, body) == (206, b"0123")
        assert headers["Content-Range"] == "bytes 0-3/10"
    assert origin.count("/c/partial") == 2


# -- RFC 9111 4.3.2 -------------------------------------------------------------------------
async def test_the_clients_entity_tag_is_merged_into_a_revalidation(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route("/c/merge", headers={"Cache-Control": "no-cache"}, body=b"v1", etag='"v1"')
    await ask(client, edge, "/c/merge")
    origin.route("/c/merge", headers={"Cache-Control": "no-cache"}, body=b"v2", etag='"v2"')
    status, headers, _ = await ask(client, edge, "/c/merge", If_None_Match='"v2"')
    assert status == 304 and headers["ETag"] == '"v2"'
    assert origin.seen_headers[-1]["If-None-Match"] == '"v1", "v2"'
    # the stored v1 is no longer current: the next request fetches v2
    status, _, body = await ask(client, edge, "/c/merge")
    assert (status, body) == (200, b"v2")


# -- RFC 9110 8.8.3, 13.1.3 -----------------------------------------------------------------
async def test_entity_tags_compare_exactly(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route("/c/etag", headers={"Cache-Control": "max-age=600"}, body=b"e", etag='"abc"')
    await ask(client, edge, "/c/etag")
    assert (await ask(client, edge, "/c/etag", If_None_Match='"abc"'))[0] == 304
    assert (await ask(client, edge, "/c/etag", If_None_Match='W/"abc"'))[0] == 304
    assert (await ask(client, edge, "/c/etag", If_None_Match="abc"))[0] == 200
    assert (await ask(client, edge, "/c/etag", If_None_Match='w/"abc"'))[0] == 200
    # an unquoted ETag is not an entity-tag: it matches nothing, not even itself
    origin.route("/c/etag-bare", headers={"Cache-Control": "max-age=600"}, body=b"e", etag="abc")
    await ask(client, edge, "/c/etag-bare")
    assert (await ask(client, edge, "/c/etag-bare", If_None_Match="abc"))[0] == 200
    # no Last-Modified stored: If-Modified-Since makes no 304
    ims = format_http_date(time.time() + 3600)
    assert (await ask(client, edge, "/c/etag", If_Modified_Since=ims))[0] == 200


# -- RFC 9111 4.3.5 (our choice: a HEAD miss fills with a GET) --------------------------------
async def test_a_head_miss_fills_the_object_for_the_next_get(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route("/c/head", headers={"Cache-Control": "max-age=600"}, body=b"body")
    status, headers, body = await ask(client, edge, "/c/head", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "4")
    status, headers, body = await ask(client, edge, "/c/head")
    # a hit, or (on a busy machine) still joined to the fill the HEAD started
    assert (status, body) == (200, b"body")
    assert hit(headers) or "collapsed" in headers["Cache-Status"]
    assert origin.count("/c/head") == 1


# -- RFC 9111 5.2.2.3, 5.2.2.4 --------------------------------------------------------------
async def test_qualified_no_cache_fields_are_not_reused(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route(
        "/c/no-cache-field",
        headers={
            "Cache-Control": 'public, max-age=600, no-cache="Set-Cookie"',
            "Set-Cookie": "a=1",
        },
    )
    _, first, _ = await ask(client, edge, "/c/no-cache-field")
    _, second, _ = await ask(client, edge, "/c/no-cache-field")
    assert first["Set-Cookie"] == "a=1"
    assert hit(second) and "Set-Cookie" not in second
    assert origin.count("/c/no-cache-field") == 1


async def test_must_understand_stores_a_status_we_understand(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route(
        "/c/understood", headers={"Cache-Control": "must-understand, no-store, max-age=600"}
    )
    await ask(client, edge, "/c/understood")
    assert hit((await ask(client, edge, "/c/understood"))[1])


# -- RFC 9111 3.5 ---------------------------------------------------------------------------
async def test_authorized_requests_reuse_only_shareable_answers(
    client: aiohttp.ClientSession, edge: Edge, origin: OriginServer
) -> None:
    origin.route("/c/auth-public", headers={"Cache-Control": "public, max-age=600"}, body=b"p")
    origin.route("/c/auth-mine", headers={"Cache-Control": "max-age=600"}, body=b"m")
    for _ in range(2):
        await ask(client, edge, "/c/auth-public", Authorization="Bearer a")
        await ask(client, edge, "/c/auth-mine", Authorization="Bearer a")
    assert origin.count("/c/auth-public") == 1
    assert origin.count("/c/auth-mine") == 2
    assert origin.seen_headers[-1]["Authorization"] == "Bearer a"


# -- RFC 9111 5.2.1 -------------------------------------------------------------------------
async def test_request_directives_are_honoured_only_where_the_service_says(
    client: aiohttp.ClientSession, edge: Edge, honouring: Edge, origin: OriginServer
) -> None:
    origin.route("/c/reload", headers={"Cache-Control": "max-age=600"}, body=b"r")
    await ask(client, edge, "/c/reload")
    _, headers, _ = await ask(client, edge, "/c/reload", Cache_Control="no-cache")
    assert hit(headers)
    assert origin.count("/c/reload") == 1
    await ask(client, honouring, "/c/reload")
    _, headers, _ = await ask(client, honouring, "/c/reload", Cache_Control="max-age=0")
    assert not hit(headers)
    _, headers, _ = await ask(client, honouring, "/c/reload", Cache_Control="max-stale=60")
    assert hit(headers)
    assert origin.count("/c/reload") == 3


async def test_early_hints_cross_a_shield(
    tmp_path: Path, origin: OriginServer, processes: list[NodeProcess]
) -> None:
    origin.route(
        "/c/tiered-hints",
        headers={"Cache-Control": "max-age=600"},
        body=b"tiered",
        early_hints=("</t.js>; rel=modulepreload",),
    )
    fleet = TieredFleet(tmp_path, [origin.url], processes, edges=1, shields=1).start()
    listen = fleet.config("edge1").listen
    raw = await raw_exchange(
        listen,
        f"GET /c/tiered-hints HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(),
    )
    informational, _, final = raw.partition(b"\r\n\r\n")
    assert informational.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert b"Link: </t.js>; rel=modulepreload" in informational
    assert final.startswith(b"HTTP/1.1 200 ") and final.endswith(b"tiered")
    assert origin.count("/c/tiered-hints") == 1
