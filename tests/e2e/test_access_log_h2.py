"""The access log of HTTP/2 requests on a real TLS edge: the same fields as HTTP/1.1
(User-Agent, Referer, the request id the origin got, upstream_ms on the miss), with
`proto` h2."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import h2.events
import pytest
from multidict import CIMultiDict

from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.tls_fleet import H2Client, TlsFiles, tls_fleet_toml
from tests.support.waiting import eventually

MADE_ID = re.compile(r"[0-9a-f]{10}-[0-9a-f]+")
HOST = "www.beta.test"


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    yield from running_origin()


@pytest.fixture(scope="module")
def edge(
    tmp_path_factory: pytest.TempPathFactory, origin: OriginServer
) -> Iterator[tuple[NodeProcess, TlsFiles, str]]:
    root = tmp_path_factory.mktemp("access-log-h2")
    files = TlsFiles(root / "tls")
    text, addresses = tls_fleet_toml(root, files, origin.url)
    (root / "fleet.toml").write_text(text)
    node = NodeProcess(
        ["edge", "--config", str(root / "fleet.toml"), "--node", "edge1"], root / "edge1.out"
    )
    node.start()
    try:
        node.wait_listening(addresses["edge_tls"])
        yield node, files, addresses["edge_tls"]
    finally:
        node.stop()


async def h2_get(client: H2Client, path: str, fields: list[tuple[str, str]]) -> int:
    """One GET with extra header fields on the client's connection; the answer's status."""
    stream_id = client.conn.get_next_available_stream_id()
    pseudo = [(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", path)]
    client.conn.send_headers(stream_id, pseudo + fields, end_stream=True)
    client.writer.write(client.conn.data_to_send())
    status = 0
    while True:
        for event in await client.events():
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                client.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                client.writer.write(client.conn.data_to_send())
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                return status


async def test_h2_lines_carry_the_same_fields(
    edge: tuple[NodeProcess, TlsFiles, str], origin: OriginServer
) -> None:
    node, files, address = edge
    origin.route("/h2/logged", headers={"Cache-Control": "max-age=300"}, body=b"x" * 50)
    client = await H2Client.connect(address, HOST, files.client_context(("h2",)))
    try:
        browser = [("user-agent", "h2-test/1.0"), ("referer", "https://www.beta.test/")]
        assert await h2_get(client, "/h2/logged", browser) == 200
        assert await h2_get(client, "/h2/logged", [*browser, ("x-request-id", "h2-trace.7")]) == 200
    finally:
        client.close()
    lines: list[dict[str, object]] = []

    def written() -> bool:
        lines[:] = [
            record
            for record in (json.loads(x) for x in node.log().splitlines() if x.startswith("{"))
            if record.get("target") == "/h2/logged"
        ]
        return len(lines) >= 2

    await eventually(written, "two h2 access log lines", 10)
    miss, hit = lines
    for line in (miss, hit):
        assert line["proto"] == "h2" and line["ua"] == "h2-test/1.0"
        assert line["referer"] == "https://www.beta.test/"
    assert isinstance(miss["upstream_ms"], float) and MADE_ID.fullmatch(str(miss["id"]))
    assert any(
        CIMultiDict(headers).get("X-Request-ID") == miss["id"] for headers in origin.seen_headers
    )
    assert hit["upstream_ms"] is None and hit["id"] == "h2-trace.7"
