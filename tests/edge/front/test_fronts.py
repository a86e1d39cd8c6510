"""Both client-facing fronts (`front = "httptools"`, the default, and `"aiohttp"`, kept
for one release) serve the same small end-to-end subset on a real edge process: a miss
then a hit, pipelined requests in order, an upload passed through, HEAD, a refused
request head. The whole e2e and adversarial suites run on either with
`EDGESHIELD_FRONT=aiohttp` (see docs/benchmarks.md and the README's testing notes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.support.front import HOST, BulkOrigin, open_raw, read_response, running_edge

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def origin() -> Iterator[BulkOrigin]:
    server = BulkOrigin().start()
    yield server
    server.close()


@pytest.fixture(scope="module", params=["httptools", "aiohttp"])
def edge_url(
    request: pytest.FixtureRequest, origin: BulkOrigin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    front: str = request.param
    with running_edge(tmp_path_factory.mktemp(front), origin.url, front) as (fleet, _):
        yield fleet.edges[0].url


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


async def test_a_miss_then_a_hit_and_pipelined_requests_in_order(edge_url: str) -> None:
    reader, writer = await open_raw(edge_url)
    writer.write(get("/both/a") + get("/both/b") + get("/both/a"))
    answers = [await read_response(reader) for _ in range(3)]
    assert [body for _, _, body in answers] == [b"ok /both/a\n", b"ok /both/b\n", b"ok /both/a\n"]
    assert "hit" in answers[2][1]["cache-status"]
    assert int(answers[2][1]["age"]) >= 0 and answers[2][1]["date"]
    writer.write(get("/both/a", method="HEAD"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 11\r\n" in head
    writer.close()


async def test_an_upload_passes_through(edge_url: str, origin: BulkOrigin) -> None:
    path = f"/upload/{edge_url.rpartition(':')[2]}"
    reader, writer = await open_raw(edge_url)
    body = b"p" * 300_000
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status, _, answer = await read_response(reader)
    assert status.startswith("HTTP/1.1 200") and answer == b"received 300000\n"
    assert origin.uploads[path] == len(body)
    writer.close()


async def test_a_malformed_head_gets_a_short_400(edge_url: str) -> None:
    reader, writer = await open_raw(edge_url)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nBad\x01: " + b"A" * 3000 + b"\r\n\r\n"
    )
    status, _, body = await read_response(reader)
    assert status.split(" ")[1] == "400" and len(body) < 100 and b"AAAA" not in body
    writer.close()
