"""The adversarial suite over TLS: smuggling on HTTP/1.1 over TLS, and h2's own attacks.

One TLS edge (tests/support/tls_fleet.py) in front of an origin that records every
request. Over TLS the edge must refuse the same ambiguous framings as in the clear
(test_smuggling's ATTACKS, replayed through a TLS socket), bound what an h2 client can
make it hold (a header list past the SETTINGS limit, more streams than allowed), and
survive a client that speaks plain HTTP or garbage to the TLS port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path

import h2.events
import h2.exceptions
import pytest

from tests.security.test_smuggling import ATTACKS
from tests.support.processes import NodeProcess
from tests.support.raw_client import EchoOrigin, parse_response
from tests.support.tls_fleet import H2Client, TlsFiles, split, tls_fleet_toml

pytestmark = pytest.mark.timeout(60)

HOST = "www.beta.test"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n"


class Edge:
    def __init__(self, root: Path, origin: EchoOrigin) -> None:
        self.files = TlsFiles(root / "tls")
        text, self.addresses = tls_fleet_toml(root, self.files, origin.url)
        (root / "fleet.toml").write_text(text)
        self.process = NodeProcess(
            ["edge", "--config", str(root / "fleet.toml"), "--node", "edge1"], root / "edge.log"
        )

    @property
    def tls(self) -> str:
        return self.addresses["edge_tls"]


@pytest.fixture(scope="module")
def origin() -> Iterator[EchoOrigin]:
    server = EchoOrigin(routes={"/ok": {"Cache-Control": "max-age=60"}}).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, origin: EchoOrigin) -> Iterator[Edge]:
    node = Edge(tmp_path_factory.mktemp("tls-adversarial"), origin)
    node.process.start()
    try:
        for key in ("edge", "edge_tls", "edge_admin"):
            node.process.wait_listening(node.addresses[key])
        yield node
    finally:
        node.process.stop()


async def tls_exchange(edge: Edge, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` over TLS (HTTP/1.1 by ALPN) and read until the edge closes."""
    host, port = split(edge.tls)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=edge.files.client_context(("http/1.1",)), server_hostname=HOST
    )
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            while chunk := await asyncio.wait_for(reader.read(65536), timeout):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


async def clean_h2_get(edge: Edge) -> int:
    client = await H2Client.connect(edge.tls, HOST, edge.files.client_context(("h2",)))
    try:
        return (await client.get(HOST, "/ok")).status
    finally:
        client.close()


@pytest.mark.parametrize(("name", "fields", "body"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_ambiguous_framing_over_tls_is_refused_and_nothing_is_smuggled(
    edge: Edge, origin: EchoOrigin, name: str, fields: str, body: bytes
) -> None:
    head = f"POST /ok?attack={name} HTTP/1.1\r\nHost: {HOST}\r\n{fields}\r\n".encode()
    answer = await tls_exchange(edge, head + body + SMUGGLED)
    if answer:
        response = parse_response(answer)
        assert response.status == 400, answer[:300]
        assert b"/smuggled" not in answer
    assert origin.counts["/smuggled"] == 0
    assert not [seen for seen in origin.seen if f"attack={name}" in seen.target]
    assert await clean_h2_get(edge) == 200


async def test_h2_header_list_over_the_limit_is_refused(edge: Edge, origin: EchoOrigin) -> None:
    client = await H2Client.connect(edge.tls, HOST, edge.files.client_context(("h2",)))
    before = len(origin.seen)
    try:
        stream_id = client.conn.get_next_available_stream_id()
        # 40 fields of 4 KiB: 160 KiB of header list against the 64 KiB announced
        fields = [(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/ok")]
        fields += [(f"x-bomb-{i}", "a" * 4096) for i in range(40)]
        client.conn.send_headers(stream_id, fields, end_stream=True)
        client.writer.write(client.conn.data_to_send())
        refused = False
        with contextlib.suppress(ConnectionResetError, h2.exceptions.ProtocolError):
            while not refused:
                for event in await client.events():
                    if isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                        refused = True
                    assert not isinstance(event, h2.events.ResponseReceived), event
        # refused by reset or GOAWAY, or the connection closed: never answered
    finally:
        client.close()
    assert not [s for s in origin.seen[before:] if "x-bomb-0" in s.headers]
    assert await clean_h2_get(edge) == 200


async def test_h2_streams_past_the_concurrency_limit_are_refused(edge: Edge) -> None:
    client = await H2Client.connect(edge.tls, HOST, edge.files.client_context(("h2",)))
    try:
        # the client ignores our SETTINGS: 150 streams open at once against 100 allowed
        client.conn.local_settings.max_concurrent_streams = 1000
        client.conn.remote_settings.max_concurrent_streams = 1000
        for _ in range(150):
            client.request(HOST, "/ok", end=False)
        refused = False
        with contextlib.suppress(ConnectionResetError):
            while not refused:
                for event in await client.events():
                    if isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                        refused = True
    finally:
        client.close()
    assert refused
    assert await clean_h2_get(edge) == 200


@pytest.mark.parametrize(
    "data",
    [
        b"GET /ok HTTP/1.1\r\nHost: www.beta.test\r\n\r\n",
        b"\x16\x03\x01\x00\x05garbage",
        b"\x00" * 4096,
    ],
    ids=["plain-http", "truncated-hello", "zeros"],
)
async def test_not_tls_on_the_tls_port_is_dropped(edge: Edge, data: bytes) -> None:
    host, port = split(edge.tls)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(ConnectionResetError):
            answer = await asyncio.wait_for(reader.read(65536), 15)
            # at most a TLS alert record, never an HTTP answer
            assert not answer.startswith(b"HTTP/"), answer[:100]
    finally:
        writer.close()
    assert await clean_h2_get(edge) == 200
