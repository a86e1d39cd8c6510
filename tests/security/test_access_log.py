"""Hostile clients against the access log of a real edge, over raw sockets: header
values that would break a JSON line or a log reader (quotes, braces, obs-text bytes,
tabs), fields far longer than a log line should hold, and request ids that are not
safe tokens or come twice. Every line stays one parseable JSON object, the client's
fields are cut to their bounds, and a hostile id is replaced by the edge's own, the
one the origin gets, on a miss and on a hit."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from multidict import CIMultiDict

from edge.accesslog import MAX_REFERER, MAX_UA
from tests.support.fleetfile import FleetSpec
from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

HOST = b"www.example.com"
MADE_ID = re.compile(r"[0-9a-f]{10}-[0-9a-f]+")


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    yield from running_origin()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, origin: OriginServer) -> Iterator[NodeProcess]:
    root: Path = tmp_path_factory.mktemp("access-log-attacks")
    config = FleetSpec(root, origins=[origin.url]).write()
    listen = re.findall(r'^listen = "([^"]+)"', config.read_text(), re.M)[0]
    node = NodeProcess(["edge", "--config", str(config), "--node", "edge1"], root / "edge.out")
    node.start()
    try:
        node.wait_listening(listen)
        node.listen = listen  # type: ignore[attr-defined]
        yield node
    finally:
        node.stop()


async def raw_get(edge: NodeProcess, path: str, fields: bytes) -> bytes:
    """One request written byte for byte; the answer's status line."""
    host, port = edge.listen.rsplit(":", 1)  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + HOST
            + b"\r\n"
            + fields
            + b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return answer.split(b"\r\n", 1)[0]


async def logged(edge: NodeProcess, path: str, count: int) -> list[dict[str, object]]:
    """The edge's first `count` access-log lines for `path`, once written; every line
    of its output that looks like JSON must parse."""
    found: list[dict[str, object]] = []

    def written() -> bool:
        records = [json.loads(line) for line in edge.log().splitlines() if line.startswith("{")]
        found[:] = [record for record in records if record.get("target") == path]
        return len(found) >= count

    await eventually(written, f"{count} lines for {path}", 10)
    return found


def origin_saw(origin: OriginServer, request_id: str) -> bool:
    return any(CIMultiDict(h).get("X-Request-ID") == request_id for h in origin.seen_headers)


HOSTILE_UA = b'evil"}, {"status": 200, "x": "\t\xff\xfe\\' + b"A" * 7_000
HOSTILE_REFERER = b"http://x/" + b'\xc3\xa9"\\' * 1_500


async def test_hostile_user_agent_and_referer_stay_inside_one_bounded_line(
    edge: NodeProcess, origin: OriginServer
) -> None:
    origin.route("/attack/ua", headers={"Cache-Control": "max-age=300"}, body=b"x")
    fields = b"User-Agent: " + HOSTILE_UA + b"\r\nReferer: " + HOSTILE_REFERER + b"\r\n"
    for _ in range(2):  # a miss, then a hit
        assert await raw_get(edge, "/attack/ua", fields) == b"HTTP/1.1 200 OK"
    for line in await logged(edge, "/attack/ua", 2):
        assert isinstance(line["ua"], str) and isinstance(line["referer"], str)
        assert len(line["ua"]) == MAX_UA and line["ua"].startswith('evil"}, {"status"')
        assert len(line["referer"]) == MAX_REFERER and line["referer"].startswith("http://x/")
        assert line["status"] == 200 and "x" not in line
    longest = max(len(text) for text in edge.log().splitlines())
    assert longest < 8 * (MAX_UA + MAX_REFERER)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("quote", b'X-Request-ID: a"b\r\n'),
        ("json", b'X-Request-ID: x","status":500,"y":"\r\n'),
        ("long", b"X-Request-ID: " + b"a" * 65 + b"\r\n"),
        ("obs-text", b"X-Request-ID: id-\xff\r\n"),
        ("space", b"X-Request-ID: one two\r\n"),
        ("twice", b"X-Request-ID: fir st\r\nX-Request-ID: second\r\n"),
    ],
)
async def test_a_hostile_request_id_is_replaced_on_a_miss_and_a_hit(
    edge: NodeProcess, origin: OriginServer, name: str, fields: bytes
) -> None:
    path = f"/attack/id-{name}"
    origin.route(path, headers={"Cache-Control": "max-age=300"}, body=b"x")
    for _ in range(2):
        assert await raw_get(edge, path, fields) == b"HTTP/1.1 200 OK"
    miss, hit = await logged(edge, path, 2)
    assert "fwd=uri-miss" in str(miss["cache"]) and str(hit["cache"]).startswith("hit")
    for line in (miss, hit):
        assert MADE_ID.fullmatch(str(line["id"])), line["id"]
    assert miss["id"] != hit["id"]
    # the origin got the edge's id in place of the client's (of both, sent twice)
    assert origin_saw(origin, str(miss["id"]))
    assert not any(
        value.encode("utf-8", "surrogateescape") in fields
        for headers in origin.seen_headers
        for key, value in headers.items()
        if key.lower() == "x-request-id"
    )


async def test_of_two_request_ids_the_first_safe_one_is_the_only_one_sent_on(
    edge: NodeProcess, origin: OriginServer
) -> None:
    path = "/attack/id-two-safe"
    origin.route(path, headers={"Cache-Control": "max-age=300"}, body=b"x")
    fields = b"X-Request-ID: first-1\r\nX-Request-ID: second-2\r\n"
    for _ in range(2):
        assert await raw_get(edge, path, fields) == b"HTTP/1.1 200 OK"
    miss, hit = await logged(edge, path, 2)
    assert miss["id"] == hit["id"] == "first-1"
    sent = [CIMultiDict(h).getall("X-Request-ID", []) for h in origin.seen_headers]
    assert ["first-1"] in sent and not any("second-2" in ids for ids in sent)
