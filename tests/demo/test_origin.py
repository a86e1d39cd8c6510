"""The demo origin on a real server: the cache headers it promises, and 304/206/416."""

from __future__ import annotations

import email.utils
import json
import signal
import subprocess
import sys
import urllib.request
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from demo.origin import STATE, OriginState, make_app
from demo.scripted import Route, pattern_bytes
from demo.sized import MAX_BODY
from tests.support.ports import free_port
from tests.support.processes import wait_for_port

LARGE = 256 * 1024


@dataclass
class Origin:
    """A running demo origin and a client session for it."""

    url: str
    session: aiohttp.ClientSession
    state: OriginState

    async def get(self, path: str, **headers: str) -> tuple[aiohttp.ClientResponse, bytes]:
        async with self.session.get(self.url + path, headers=headers) as response:
            return response, await response.read()

    async def post(self, path: str) -> object:
        async with self.session.post(self.url + path) as response:
            assert response.status == 200
            return await response.json()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    app = make_app(large_size=LARGE)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield Origin(f"http://127.0.0.1:{port}", session, app[STATE])
    await runner.cleanup()


async def test_index_lists_the_paths_and_health_is_ok(origin: Origin) -> None:
    response, body = await origin.get("/")
    assert response.status == 200
    for path in ("/pages/home", "/images/logo.png", "/api/items", "/large.bin", "/greeting"):
        assert path.encode() in body
    response, body = await origin.get("/healthz")
    assert (response.status, body) == (200, b"ok\n")


async def test_a_page_is_cacheable_html_with_validators_and_surrogate_keys(
    origin: Origin,
) -> None:
    response, body = await origin.get("/pages/home")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    cache_control = response.headers["Cache-Control"]
    for directive in ("public", "max-age=60", "stale-while-revalidate=30", "stale-if-error=600"):
        assert directive in cache_control
    assert response.headers["Surrogate-Key"] == "pages page-home"
    assert response.headers["ETag"] == '"page-home-v1"'
    assert email.utils.parsedate_to_datetime(response.headers["Last-Modified"])
    assert b"Content version 1." in body
    assert len(zlib.compress(body)) < len(body) / 4, "pages should compress well"


async def test_if_none_match_and_if_modified_since_get_304_with_the_200s_headers(
    origin: Origin,
) -> None:
    first, _ = await origin.get("/pages/home")
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]

    response, body = await origin.get("/pages/home", **{"If-None-Match": f'"x", W/{etag}'})
    assert (response.status, body) == (304, b"")
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == first.headers["Cache-Control"]

    response, body = await origin.get("/pages/home", **{"If-Modified-Since": last_modified})
    assert (response.status, body) == (304, b"")

    # RFC 9110 13.1.3: If-Modified-Since is ignored when If-None-Match is present.
    response, _ = await origin.get(
        "/pages/home", **{"If-None-Match": '"other"', "If-Modified-Since": last_modified}
    )
    assert response.status == 200


async def test_bump_changes_the_body_the_etag_and_last_modified(origin: Origin) -> None:
    first, _ = await origin.get("/pages/home")
    assert await origin.post("/admin/bump") == {"version": 2}

    response, body = await origin.get("/pages/home", **{"If-None-Match": first.headers["ETag"]})
    assert response.status == 200
    assert b"Content version 2." in body
    assert response.headers["ETag"] == '"page-home-v2"'
    response, _ = await origin.get(
        "/pages/home", **{"If-Modified-Since": first.headers["Last-Modified"]}
    )
    assert response.status == 200
    _, api = await origin.get("/api/items")
    assert json.loads(api)["version"] == 2


async def test_an_image_is_a_png_that_does_not_compress(origin: Origin) -> None:
    response, body = await origin.get("/images/logo.png")
    assert response.status == 200
    assert response.headers["Content-Type"] == "image/png"
    assert body.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(zlib.compress(body, 9)) > 0.95 * len(body)
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    assert response.headers["Surrogate-Key"] == "images image-logo"
    again, same = await origin.get("/images/logo.png")
    assert same == body and again.headers["ETag"] == response.headers["ETag"]


async def test_the_api_sends_json_with_s_maxage_and_surrogate_keys(origin: Origin) -> None:
    response, body = await origin.get("/api/items")
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "public, max-age=5, s-maxage=30"
    assert response.headers["Surrogate-Key"] == "api items"
    assert len(json.loads(body)["items"]) == 10

    response, body = await origin.get("/api/items/3")
    assert json.loads(body)["id"] == 3
    assert response.headers["Surrogate-Key"] == "api item-3"
    response, _ = await origin.get("/api/items/99")
    assert response.status == 404


async def test_greeting_varies_by_accept_language(origin: Origin) -> None:
    response, body = await origin.get("/greeting", **{"Accept-Language": "fr;q=0.5, de"})
    assert response.headers["Vary"] == "Accept-Language"
    assert response.headers["Content-Language"] == "de"
    assert body.startswith(b"Hallo")
    response, body = await origin.get("/greeting", **{"Accept-Language": "xx"})
    assert response.headers["Content-Language"] == "en"
    assert body.startswith(b"Hello")


@pytest.mark.parametrize(
    ("kind", "header", "expected"),
    [
        ("no-store", "Cache-Control", "no-store"),
        ("private", "Cache-Control", "private, max-age=60"),
        ("no-cache", "Cache-Control", "no-cache"),
        ("swr", "Cache-Control", "public, max-age=2, stale-while-revalidate=60"),
        ("sie", "Cache-Control", "public, max-age=2, stale-if-error=3600"),
        ("cdn-cache-control", "CDN-Cache-Control", "max-age=300"),
        ("surrogate-control", "Surrogate-Control", "max-age=300"),
    ],
)
async def test_each_header_demo_sends_its_header(
    origin: Origin, kind: str, header: str, expected: str
) -> None:
    response, body = await origin.get(f"/headers/{kind}")
    assert response.status == 200
    assert response.headers[header] == expected
    assert response.headers["Surrogate-Key"] == f"headers headers-{kind}"
    assert body.startswith(f"{kind}: version 1".encode())


async def test_expires_and_heuristic_demos_have_no_cache_control(origin: Origin) -> None:
    response, _ = await origin.get("/headers/expires")
    assert "Cache-Control" not in response.headers
    assert email.utils.parsedate_to_datetime(response.headers["Expires"])
    response, _ = await origin.get("/headers/heuristic")
    assert "Cache-Control" not in response.headers
    assert "ETag" not in response.headers
    assert "Last-Modified" in response.headers


async def test_large_object_answers_ranges(origin: Origin) -> None:
    response, whole = await origin.get("/large.bin")
    assert len(whole) == LARGE
    assert response.headers["Accept-Ranges"] == "bytes"
    etag = response.headers["ETag"]

    response, part = await origin.get("/large.bin", Range="bytes=100-199")
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 100-199/{LARGE}"
    assert part == whole[100:200]

    response, part = await origin.get("/large.bin", Range="bytes=-10")
    assert (response.status, part) == (206, whole[-10:])
    response, part = await origin.get("/large.bin", Range=f"bytes={LARGE - 5}-")
    assert (response.status, part) == (206, whole[-5:])

    response, _ = await origin.get("/large.bin", Range=f"bytes={LARGE}-")
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{LARGE}"

    response, part = await origin.get("/large.bin", Range="bytes=0-1", **{"If-Range": etag})
    assert (response.status, part) == (206, whole[:2])
    response, part = await origin.get("/large.bin", Range="bytes=0-1", **{"If-Range": '"old"'})
    assert (response.status, len(part)) == (200, LARGE)
    response, part = await origin.get("/large.bin", Range="bytes=0-1,5-6")
    assert (response.status, len(part)) == (200, LARGE)


async def test_head_has_the_headers_and_no_body(origin: Origin) -> None:
    async with origin.session.head(origin.url + "/pages/home") as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 1000
        assert await response.read() == b""
        assert response.headers["ETag"] == '"page-home-v1"'


async def test_failure_mode_answers_503_until_turned_off(origin: Origin) -> None:
    assert await origin.post("/admin/fail?on=1") == {"failing": True}
    response, _ = await origin.get("/pages/home")
    assert response.status == 503
    assert response.headers["Cache-Control"] == "no-store"
    assert await origin.post("/admin/fail?on=0") == {"failing": False}
    response, _ = await origin.get("/pages/home")
    assert response.status == 200


async def test_stats_count_what_reached_the_origin_and_echo_shows_the_request(
    origin: Origin,
) -> None:
    await origin.get("/pages/a")
    await origin.get("/pages/a")
    await origin.get("/healthz")
    response, body = await origin.get("/echo", **{"X-Forwarded-For": "192.0.2.1"})
    assert response.headers["Cache-Control"] == "no-store"
    echoed = json.loads(body)
    assert ["X-Forwarded-For", "192.0.2.1"] in echoed["headers"]
    _, body = await origin.get("/admin/stats")
    requests = json.loads(body)["requests"]
    assert requests["/pages/a"] == 2
    assert "/healthz" not in requests


async def test_status_path_answers_that_status(origin: Origin) -> None:
    response, _ = await origin.get("/status/404")
    assert response.status == 404
    assert "Cache-Control" not in response.headers
    response, _ = await origin.get("/status/abc")
    assert response.status == 400


def test_runs_as_a_module_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.origin", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/pages/x", timeout=5) as response:
            assert response.status == 200
            assert b"Content version 1." in response.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"listening on http://127.0.0.1:{port}".encode() in output
    assert b"GET /pages/x 200" in output


async def test_sized_objects_have_the_size_asked_for_and_are_cacheable(origin: Origin) -> None:
    response, body = await origin.get("/json/1k")
    assert (response.status, len(body)) == (200, 1024)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert len(zlib.compress(body)) < len(body) // 2  # JSON-like text compresses
    response, again = await origin.get("/json/1k")
    assert again == body
    response, body = await origin.get("/bin/100k")
    assert (response.status, len(body)) == (200, 100 * 1024)
    assert len(zlib.compress(body)) > len(body) * 0.99
    assert response.headers["Content-Type"] == "application/octet-stream"
    response, body = await origin.get("/stream/1m")
    assert (response.status, len(body)) == (200, 1024**2)
    assert response.headers["Content-Length"] == str(1024**2)


async def test_sized_objects_refuse_malformed_or_huge_sizes(origin: Origin) -> None:
    for path in ("/json/abc", "/bin/1x", "/bin/-1", f"/bin/{MAX_BODY + 1}", "/stream/1t"):
        response, _ = await origin.get(path)
        assert response.status == 404, path


async def test_a_scripted_route_answers_before_a_built_in_one(origin: Origin) -> None:
    origin.state.routes["/pages/home"] = Route(status=201, body=b"scripted")
    response, body = await origin.get("/pages/home")
    assert (response.status, body) == (201, b"scripted")
    origin.state.routes["/q?a=1"] = Route(body=b"with query")
    response, body = await origin.get("/q?a=1")
    assert body == b"with query"
    assert origin.state.requests["/q?a=1"] == 1
    assert origin.state.requests["/pages/home"] == 1


async def test_a_scripted_etag_gets_304_and_a_generated_body_streams(origin: Origin) -> None:
    origin.state.routes["/e"] = Route(etag='"e1"', headers={"Cache-Control": "max-age=5"})
    response, _ = await origin.get("/e", **{"If-None-Match": '"e1"'})
    assert response.status == 304
    assert response.headers["ETag"] == '"e1"'
    origin.state.routes["/big"] = Route(size=200_000)
    response, body = await origin.get("/big")
    assert body == pattern_bytes(200_000)
    assert origin.state.seen_headers[-1].get("If-None-Match") is None


async def test_a_scripted_cut_drops_the_connection_mid_body(origin: Origin) -> None:
    origin.state.routes["/cut"] = Route(size=200_000, cut_after=100_000)
    with pytest.raises(aiohttp.ClientPayloadError):
        await origin.get("/cut")
