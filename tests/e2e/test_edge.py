"""The edge as a real process in front of a real (scripted) origin.

Each test asserts what the client saw and what the origin saw (request counts), the
way Varnish's tests assert counters.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import brotli
import pytest
from multidict import CIMultiDict

from tests.support.fleetfile import FleetSpec
from tests.support.origin import OriginServer, pattern_bytes, running_origin
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

HOST = "www.example.com"


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    yield from running_origin()


class Edge:
    """One edge process and how to reach it."""

    def __init__(
        self,
        tmp_path: Path,
        origin: OriginServer,
        processes: list[NodeProcess],
        service_extra: str = "",
    ) -> None:
        self.spec = FleetSpec(
            tmp_path / "fleet",
            origins=[origin.url],
            edges=1,
            service_extra='health_check_path = "/healthz"\n' + service_extra,
        )
        self.config = self.spec.write()
        text = self.config.read_text()
        self.listen = re.findall(r'^listen = "([^"]+)"', text, re.M)[0]
        self.base = f"http://{self.listen}"
        self.processes = processes
        self.tmp_path = tmp_path
        self.node: NodeProcess | None = None

    def start(self) -> NodeProcess:
        node = NodeProcess(
            ["edge", "--config", str(self.config), "--node", "edge1"],
            self.tmp_path / "edge.log",
        ).start()
        self.processes.append(node)
        node.wait_listening(self.listen)
        self.node = node
        return node


@pytest.fixture
def edge(tmp_path: Path, origin: OriginServer, processes: list[NodeProcess]) -> Edge:
    node = Edge(tmp_path, origin, processes)
    node.start()
    return node


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def get(
    client: aiohttp.ClientSession, edge: Edge, path: str, **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    hdrs = {"Host": HOST, **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with client.get(edge.base + path, headers=hdrs) as response:
        body = await response.read()
        return response.status, CIMultiDict(response.headers), body


async def variants_stored(client: aiohttp.ClientSession, edge: Edge, path: str) -> None:
    """Wait until the edge answers `path` in br and in gzip (its variants are made
    after the fill, one after the other)."""

    async def stored() -> bool:
        for coding in ("br", "gzip"):
            _, headers, _ = await get(client, edge, path, Accept_Encoding=coding)
            if headers.get("Content-Encoding") != coding:
                return False
        return True

    await eventually(stored, f"the br and gzip variants of {path}")


async def test_fifty_concurrent_cold_requests_make_one_origin_request(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/cold",
        headers={"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"},
        size=300_000,
        delay=0.3,
        chunk_delay=0.01,
    )
    results = await asyncio.gather(*(get(client, edge, "/cold") for _ in range(50)))
    expected = pattern_bytes(300_000)
    assert all(status == 200 and body == expected for status, _, body in results)
    assert origin.count("/cold") == 1
    collapsed = [h for _, h, _ in results if "collapsed" in h["Cache-Status"]]
    assert len(collapsed) >= 40


async def test_waiters_receive_the_body_while_it_streams(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/slow",
        headers={"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"},
        size=640 * 1024,
        chunk_delay=0.1,
    )
    started = time.monotonic()
    async with client.get(edge.base + "/slow", headers={"Host": HOST}) as response:
        first = await response.content.readany()
        first_at = time.monotonic() - started
        rest = await response.read()
    total = time.monotonic() - started
    assert first and len(first) + len(rest) == 640 * 1024
    # the first bytes arrived well before the whole body (about 1 s of trickle)
    assert first_at < total / 2


async def test_conditional_and_range_requests_answered_from_cache(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    payload = bytes(range(256)) * 40
    origin.route(
        "/obj",
        headers={
            "Cache-Control": "max-age=300",
            "Content-Type": "application/octet-stream",
            "Last-Modified": "Mon, 02 Nov 2026 10:00:00 GMT",
        },
        body=payload,
        etag='"v1"',
    )
    await get(client, edge, "/obj")
    status, headers, body = await get(client, edge, "/obj", If_None_Match='"v1"')
    assert (status, body) == (304, b""), headers
    assert headers.get("ETag") == '"v1"', headers
    status, _, _ = await get(
        client, edge, "/obj", If_Modified_Since="Tue, 03 Nov 2026 10:00:00 GMT"
    )
    assert status == 304
    status, headers, body = await get(client, edge, "/obj", Range="bytes=10-19")
    assert status == 206 and body == payload[10:20]
    assert headers["Content-Range"] == f"bytes 10-19/{len(payload)}"
    status, headers, _ = await get(client, edge, "/obj", Range="bytes=-5")
    assert (
        status == 206
        and headers["Content-Range"]
        == f"bytes {len(payload) - 5}-{len(payload) - 1}/{len(payload)}"
    )
    status, headers, _ = await get(client, edge, "/obj", Range=f"bytes={len(payload) + 10}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(payload)}"
    status, _, body = await get(client, edge, "/obj", Range="bytes=0-3", If_Range='"other"')
    assert status == 200 and body == payload
    assert origin.count("/obj") == 1


async def test_br_and_gzip_decompress_to_the_identity_body(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    text = b"<html>" + b"edgeshield compresses once per object. " * 2000 + b"</html>"
    origin.route(
        "/c.html", headers={"Cache-Control": "max-age=300", "Content-Type": "text/html"}, body=text
    )
    await get(client, edge, "/c.html")
    await variants_stored(client, edge, "/c.html")
    _, headers, body = await get(client, edge, "/c.html", Accept_Encoding="gzip;q=0.5, br;q=1")
    assert headers.get("Content-Encoding") == "br" and brotli.decompress(body) == text
    _, headers, body = await get(client, edge, "/c.html", Accept_Encoding="gzip")
    assert headers.get("Content-Encoding") == "gzip" and gzip.decompress(body) == text
    _, headers, body = await get(client, edge, "/c.html", Accept_Encoding="identity")
    assert "Content-Encoding" not in headers and body == text
    assert "Accept-Encoding" in headers["Vary"]
    assert origin.count("/c.html") == 1


async def test_origin_gzip_is_decoded_for_clients_that_do_not_accept_it(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    text = b'{"items": [' + b'"x", ' * 5000 + b'"y"]}'
    origin.route(
        "/api.json",
        headers={
            "Cache-Control": "max-age=300",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
        body=gzip.compress(text),
    )
    status, headers, body = await get(client, edge, "/api.json", Accept_Encoding="identity")
    assert status == 200 and body == text and "Content-Encoding" not in headers
    await variants_stored(client, edge, "/api.json")
    status, headers, body = await get(client, edge, "/api.json", Accept_Encoding="identity")
    assert status == 200 and body == text
    status, headers, body = await get(client, edge, "/api.json", Accept_Encoding="br")
    assert headers.get("Content-Encoding") == "br" and brotli.decompress(body) == text


@pytest.mark.parametrize(
    "cache_control", ["no-store", "private, max-age=300", "max-age=300, no-store"]
)
async def test_no_store_and_private_are_never_stored(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession, cache_control: str
) -> None:
    origin.route(
        "/p", headers={"Cache-Control": cache_control, "Content-Type": "text/plain"}, body=b"mine"
    )
    for _ in range(3):
        status, _, body = await get(client, edge, "/p")
        assert (status, body) == (200, b"mine")
    assert origin.count("/p") == 3


async def test_private_answers_are_not_shared_with_collapsed_waiters(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/me",
        headers={"Cache-Control": "private", "Content-Type": "text/plain"},
        body=b"x",
        delay=0.3,
    )
    results = await asyncio.gather(*(get(client, edge, "/me") for _ in range(5)))
    assert all(status == 200 for status, _, _ in results)
    assert origin.count("/me") == 5


async def test_unknown_host_gets_421_and_no_origin_request(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    async with client.get(edge.base + "/x", headers={"Host": "evil.example.net"}) as response:
        assert response.status == 421
        assert "evil.example.net" in await response.text()
        # the node's own refusal: not an error of the tiers beyond it, nor forwarded
        assert "X-Edgeshield-Error" not in response.headers
        assert "fwd=" not in response.headers["Cache-Status"]
    assert sum(n for path, n in origin.requests.items() if path != "/healthz") == 0


async def test_vary_keeps_one_variant_per_request_value(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/v",
        headers={
            "Cache-Control": "max-age=300",
            "Vary": "Accept-Language",
            "Content-Type": "text/plain",
        },
        body=b"hello",
    )
    for lang in ("en", "de", "en", "de"):
        status, headers, _ = await get(client, edge, "/v", Accept_Language=lang)
        assert status == 200
    assert origin.count("/v") == 2
    assert "hit" in headers["Cache-Status"]


async def test_targeted_cache_control_is_obeyed_and_surrogate_keys_stay_in_the_cdn(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/t",
        headers={
            "Cache-Control": "no-store",
            "CDN-Cache-Control": "max-age=600",
            "Surrogate-Key": "product-1 catalog",
            "Content-Type": "text/plain",
        },
        body=b"targeted",
    )
    await get(client, edge, "/t")
    _, headers, _ = await get(client, edge, "/t")
    assert "hit" in headers["Cache-Status"]
    assert headers["Cache-Control"] == "no-store"
    # RFC 9213 2: CDN-Cache-Control goes on to any CDN in front of ours (docs/caching.md)
    assert headers["CDN-Cache-Control"] == "max-age=600"
    assert "Surrogate-Key" not in headers
    assert origin.count("/t") == 1


async def test_upstream_request_hygiene(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route("/h", headers={"Cache-Control": "max-age=300"}, body=b"ok")
    await get(
        client,
        edge,
        "/h?utm_source=x&b=2&a=1",
        X_Forwarded_Host="attacker.example",
        Connection="close",
    )
    await get(client, edge, "/h?a=1&b=2&gclid=z")
    seen = origin.seen_headers[-1]
    assert origin.count("/h?a=1&b=2") == 1
    assert "X-Forwarded-Host" not in seen
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["Forwarded"].startswith("for=127.0.0.1")
    assert "edgeshield-edge1" in seen["CDN-Loop"]


async def test_head_is_answered_from_the_stored_get(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/head",
        headers={"Cache-Control": "max-age=300", "Content-Type": "text/plain"},
        body=b"12345",
    )
    await get(client, edge, "/head")
    async with client.head(edge.base + "/head", headers={"Host": HOST}) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "5"
        assert "hit" in response.headers["Cache-Status"]
    assert origin.count("/head") == 1


async def test_unsafe_method_invalidates_the_target(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route("/u", headers={"Cache-Control": "max-age=300"}, body=b"v")
    await get(client, edge, "/u")
    async with client.post(edge.base + "/u", headers={"Host": HOST}, data=b"change") as response:
        assert response.status == 200
    await get(client, edge, "/u")
    assert origin.count("/u") == 3


async def test_errors_are_not_stored_without_negative_caching(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    for _ in range(2):
        status, _, _ = await get(client, edge, "/missing")
        assert status == 404
    assert origin.count("/missing") == 2


async def test_restart_keeps_stored_objects(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/keep",
        headers={"Cache-Control": "max-age=300", "Content-Type": "text/plain"},
        body=b"durable",
    )
    await get(client, edge, "/keep")
    assert edge.node is not None
    edge.node.stop()
    edge.start()
    status, headers, body = await get(client, edge, "/keep")
    assert (status, body) == (200, b"durable")
    assert "hit" in headers["Cache-Status"]
    assert origin.count("/keep") == 1


async def test_killed_during_a_fill_never_serves_it_truncated(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    size = 4 * 1024 * 1024
    origin.route(
        "/big",
        headers={"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"},
        size=size,
        chunk_delay=0.02,
    )
    async with client.get(edge.base + "/big", headers={"Host": HOST}) as response:
        await response.content.readexactly(256 * 1024)
        assert edge.node is not None
        edge.node.kill()
    edge.start()
    origin.route(
        "/big",
        headers={"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"},
        size=size,
    )
    status, headers, body = await get(client, edge, "/big")
    assert status == 200 and len(body) == size and body == pattern_bytes(size)
    assert origin.count("/big") == 2
    assert "fwd=uri-miss" in headers["Cache-Status"]


async def test_upstream_cut_short_is_not_stored(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/cut",
        headers={"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"},
        size=1_000_000,
        cut_after=300_000,
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(client, edge, "/cut")
    origin.route("/cut", headers={"Cache-Control": "max-age=300"}, size=1_000_000)
    status, headers, body = await get(client, edge, "/cut")
    assert status == 200 and len(body) == 1_000_000
    # nothing of the cut fills was kept: this one went upstream again
    assert "fwd=uri-miss" in headers["Cache-Status"]


async def test_admin_needs_the_node_secret(edge: Edge, client: aiohttp.ClientSession) -> None:
    admin = re.findall(r'^admin_listen = "([^"]+)"', edge.config.read_text(), re.M)[0]
    async with client.get(f"http://{admin}/healthz") as response:
        assert response.status == 401
    async with client.get(
        f"http://{admin}/metrics", headers={"Authorization": "Bearer test-node-secret"}
    ) as response:
        assert response.status == 200
        assert "edgeshield_requests_total" in await response.text()


async def test_collapsed_waiters_get_their_own_variant(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/lang",
        headers={"Cache-Control": "max-age=300", "Vary": "Accept-Language"},
        body=b"one body for every language",
        delay=0.3,
    )
    results = await asyncio.gather(
        *(get(client, edge, "/lang", Accept_Language=lang) for lang in ("en", "de", "en", "fr"))
    )
    assert all(status == 200 for status, _, _ in results)
    # en is shared; de and fr each need their own variant
    assert origin.count("/lang") == 3
    for lang in ("en", "de", "fr"):
        status, _, _ = await get(client, edge, "/lang", Accept_Language=lang)
        assert status == 200
    # each variant is now stored (or still being stored): no further origin request
    assert origin.count("/lang") == 3


async def test_variants_per_url_are_capped(
    tmp_path: Path,
    origin: OriginServer,
    processes: list[NodeProcess],
    client: aiohttp.ClientSession,
) -> None:
    edge = Edge(tmp_path, origin, processes, service_extra="max_variants = 2")
    edge.start()
    origin.route("/cap", headers={"Cache-Control": "max-age=300", "Vary": "X-Variant"}, body=b"c")
    for variant in ("a", "b", "c"):
        await get(client, edge, "/cap", X_Variant=variant)
    _, headers, _ = await get(client, edge, "/cap", X_Variant="c")
    assert "hit" in headers["Cache-Status"]
    _, headers, _ = await get(client, edge, "/cap", X_Variant="a")
    assert "vary-miss" in headers["Cache-Status"]
    assert origin.count("/cap") == 4


async def test_large_hits_and_ranges_leave_by_sendfile(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    size = 3 * 1024 * 1024
    origin.route(
        "/large.bin",
        headers={"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"},
        size=size,
    )
    await get(client, edge, "/large.bin")
    status, headers, body = await get(client, edge, "/large.bin")
    assert status == 200 and "hit" in headers["Cache-Status"] and body == pattern_bytes(size)
    status, headers, body = await get(client, edge, "/large.bin", Range="bytes=1000000-1999999")
    assert status == 206 and body == pattern_bytes(size)[1_000_000:2_000_000]
    assert origin.count("/large.bin") == 1


async def test_negative_caching_when_the_service_configures_it(
    tmp_path: Path,
    origin: OriginServer,
    processes: list[NodeProcess],
    client: aiohttp.ClientSession,
) -> None:
    edge = Edge(tmp_path, origin, processes, service_extra="negative_ttl = 30")
    edge.start()
    for _ in range(3):
        status, headers, _ = await get(client, edge, "/gone")
        assert status == 404
    assert "hit" in headers["Cache-Status"]
    assert origin.count("/gone") == 1


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


async def test_memory_stays_flat_while_a_large_object_streams_through(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    size = 256 * 1024 * 1024
    origin.route(
        "/huge.bin",
        headers={"Cache-Control": "max-age=300", "Content-Type": "application/octet-stream"},
        size=size,
    )
    assert edge.node is not None and edge.node.proc is not None
    before = _peak_rss_kib(edge.node.proc.pid)
    received = 0
    async with client.get(edge.base + "/huge.bin", headers={"Host": HOST}) as response:
        async for chunk in response.content.iter_chunked(1024 * 1024):
            received += len(chunk)
    assert received == size
    grown_mib = (_peak_rss_kib(edge.node.proc.pid) - before) / 1024
    # the body passes through in chunks: the edge's peak memory grows by a few MiB of
    # buffers, not by the object's 256 MiB
    assert grown_mib < 64, f"edge peak RSS grew by {grown_mib:.0f} MiB"


async def test_absolute_form_for_another_host_gets_421(edge: Edge, origin: OriginServer) -> None:
    host, port = edge.listen.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET http://evil.example.net/steal HTTP/1.1\r\n"
        b"Host: www.example.com\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 421")
    assert b"evil.example.net" in answer
    assert sum(n for path, n in origin.requests.items() if path != "/healthz") == 0


async def test_access_log_has_json_lines_with_the_cache_outcome(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route("/logged", headers={"Cache-Control": "max-age=300"}, body=b"x")
    await get(client, edge, "/logged")
    await get(client, edge, "/logged")
    assert edge.node is not None
    lines: list[dict[str, object]] = []

    def both_logged() -> bool:
        assert edge.node is not None
        lines[:] = [
            json.loads(line)
            for line in edge.node.log().splitlines()
            if line.startswith("{") and '"/logged"' in line
        ]
        return len(lines) >= 2

    await eventually(both_logged, "two access log lines for /logged", 4)
    assert [line["status"] for line in lines] == [200, 200]
    assert "fwd=uri-miss" in str(lines[0]["cache"]) and "hit" in str(lines[1]["cache"])
    assert lines[1]["node"] == "edge1" and lines[1]["host"] == HOST


async def test_cookies_reach_the_origin_and_personal_answers_stay_personal(
    edge: Edge, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    origin.route(
        "/account",
        headers={"Cache-Control": "max-age=300", "Set-Cookie": "session=abc"},
        body=b"hello, alice",
    )
    status, _, body = await get(client, edge, "/account", Cookie="session=abc")
    assert (status, body) == (200, b"hello, alice")
    assert origin.seen_headers[-1].get("Cookie") == "session=abc"
    # a response that sets a cookie (and is not marked public) is never shared
    await get(client, edge, "/account")
    assert origin.count("/account") == 2
