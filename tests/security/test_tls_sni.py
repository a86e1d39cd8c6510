"""The ClientHello read before TLS, attacked on a real edge (edge/front/tls_listener.py).

Two real edges in front of an origin: `edge` (two workers on the shared TLS port, the
default limits) and `capped` (one worker, three connections at most). An unknown or
missing name gets exactly the `unrecognized_name` alert record (RFC 6066 3) and is
counted; a known name still works over HTTP/1.1 and h2, even with its hello dribbled a
byte at a time; garbage, an oversized hello, a hello cut short and a client that says
nothing are closed within the handshake timeout while other clients are served; and
connections in their handshake count against the connection cap.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from edge.front.tls_listener import HANDSHAKE_TIMEOUT
from tests.support.processes import NodeProcess
from tests.support.raw_client import EchoOrigin, parse_response
from tests.support.sni import (
    UNRECOGNIZED_NAME_ALERT,
    BioClient,
    client_hello,
    metric,
    raw_exchange,
    sni_fleet_toml,
)
from tests.support.tls_fleet import H2Client, TlsFiles, split
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

HOST = "www.beta.test"
DECODE_ERROR_ALERT = bytes((21, 3, 3, 0, 2, 2, 50))
CAP = 3


class Edge:
    def __init__(self, root: Path, origin: EchoOrigin, **edge_keys: int) -> None:
        self.files = TlsFiles(root / "tls")
        text, self.addresses = sni_fleet_toml(root, self.files, origin.url, **edge_keys)
        (root / "fleet.toml").write_text(text)
        self.process = NodeProcess(
            ["edge", "--config", str(root / "fleet.toml"), "--node", "edge1"], root / "edge.log"
        )

    def start(self) -> Edge:
        self.process.start()
        for key in ("edge", "edge_tls", "edge_admin"):
            self.process.wait_listening(self.addresses[key])
        return self

    @property
    def tls(self) -> str:
        return self.addresses["edge_tls"]

    async def metric(self, name: str) -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://{self.addresses['edge_admin']}/metrics",
                headers={"Authorization": "Bearer test-node-secret"},
            ) as response,
        ):
            return metric(await response.text(), name)


@pytest.fixture(scope="module")
def origin() -> Iterator[EchoOrigin]:
    server = EchoOrigin(routes={"/ok": {"Cache-Control": "max-age=60"}}).start()
    yield server
    server.close()


def _running(root: Path, origin: EchoOrigin, **edge_keys: int) -> Iterator[Edge]:
    node = Edge(root, origin, **edge_keys)
    try:
        yield node.start()
    finally:
        node.process.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, origin: EchoOrigin) -> Iterator[Edge]:
    yield from _running(tmp_path_factory.mktemp("sni"), origin, workers=2)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, origin: EchoOrigin) -> Iterator[Edge]:
    yield from _running(
        tmp_path_factory.mktemp("sni-capped"), origin, workers=1, max_connections=CAP
    )


async def h1_get(edge: Edge, name: str = HOST) -> int:
    host, port = split(edge.tls)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=edge.files.client_context(("http/1.1",)), server_hostname=name
    )
    try:
        writer.write(f"GET /ok HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    return parse_response(answer).status


async def h2_get(edge: Edge, name: str = HOST) -> int:
    client = await H2Client.connect(edge.tls, name, edge.files.client_context(("h2",)))
    try:
        return (await client.get(name, "/ok")).status
    finally:
        client.close()


async def refused_reason(edge: Edge, name: str | None) -> str:
    """What Python's ssl says when it asks the edge for `name` (None: no SNI)."""
    host, port = split(edge.tls)
    context = edge.files.client_context()
    context.check_hostname = False
    with pytest.raises(ssl.SSLError) as refused:
        await asyncio.open_connection(host, port, ssl=context, server_hostname=name or "")
    return str(refused.value.reason)


async def test_a_raw_hello_for_an_unknown_name_gets_exactly_the_alert(edge: Edge) -> None:
    before = await edge.metric("edgeshield_tls_unrecognized_name_total")
    for name in ("www.other.test", None, "www.beta.test.evil.test"):
        answer, _ = await raw_exchange(edge.tls, client_hello(name))
        assert answer == UNRECOGNIZED_NAME_ALERT, name
    await eventually(
        lambda: _equals(edge, "edgeshield_tls_unrecognized_name_total", before + 3),
        "three refusals counted",
    )


async def _equals(edge: Edge, name: str, value: float) -> bool:
    return await edge.metric(name) == value


async def test_an_ssl_client_asking_for_an_unknown_name_is_told_unrecognized_name(
    edge: Edge,
) -> None:
    before = await edge.metric("edgeshield_tls_unrecognized_name_total")
    assert await refused_reason(edge, "www.other.test") == "TLSV1_UNRECOGNIZED_NAME"
    # without SNI too: the edge has no certificate of its own to answer with
    assert await refused_reason(edge, None) == "TLSV1_UNRECOGNIZED_NAME"
    await eventually(
        lambda: _equals(edge, "edgeshield_tls_unrecognized_name_total", before + 2),
        "two refusals counted",
    )


async def test_a_known_name_still_works_over_http11_and_h2(edge: Edge) -> None:
    assert await h1_get(edge) == 200
    assert await h2_get(edge) == 200
    assert await h1_get(edge, "www.alpha.test") == 200
    assert await h2_get(edge, "a.img.alpha.test") == 200


async def test_a_hello_dribbled_a_byte_at_a_time_is_served(edge: Edge) -> None:
    client = BioClient(edge.files.client_context(("http/1.1",)), HOST)
    hello = client.hello()
    host, port = split(edge.tls)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in hello:
            writer.write(bytes([byte]))
            await writer.drain()
            # one segment per byte: the edge sees the hello arrive in pieces
            await asyncio.sleep(0.001)
        await client.finish(reader, writer)
        answer = await client.get(reader, writer, HOST, "/ok")
    finally:
        writer.close()
    assert parse_response(answer).status == 200


def _padded_hello(padding: int) -> bytes:
    """A hello for HOST with an extension of `padding` zeros, of a GREASE type (RFC 8701:
    servers ignore it; OpenSSL's hello has a padding extension already), in records of
    1 KiB."""
    hello = client_hello(HOST)
    message = bytearray(hello[5:])
    extension = struct.pack(">HH", 0x1A1A, padding) + b"\0" * padding
    message += extension
    # the handshake length and the extensions' length grow by the extension's size
    message[1:4] = (len(message) - 4).to_bytes(3)
    # the extensions block is last: its length field sits where the client put it
    body = bytes(message[4:])
    at = 2 + 32
    at += 1 + body[at]
    at += 2 + int.from_bytes(body[at : at + 2])
    at += 1 + body[at]
    extensions = int.from_bytes(body[at : at + 2]) + len(extension)
    message[4 + at : 4 + at + 2] = extensions.to_bytes(2)
    out = b""
    for start in range(0, len(message), 1024):
        fragment = bytes(message[start : start + 1024])
        out += b"\x16\x03\x01" + len(fragment).to_bytes(2) + fragment
    return out


async def test_an_oversized_hello_is_refused_at_once(edge: Edge) -> None:
    # a handshake header announcing 1 MiB: refused before the bytes arrive
    answer, took = await raw_exchange(edge.tls, b"\x16\x03\x01\x00\x04\x01\x10\x00\x00")
    assert answer == DECODE_ERROR_ALERT
    assert took < HANDSHAKE_TIMEOUT / 2
    # 17 KiB of real records: refused once they pass the bound
    answer, took = await raw_exchange(edge.tls, _padded_hello(17 * 1024))
    assert answer == DECODE_ERROR_ALERT
    assert took < HANDSHAKE_TIMEOUT / 2
    # under the bound the same construction is answered with a ServerHello's record
    host, port = split(edge.tls)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_padded_hello(4 * 1024))
        assert (await asyncio.wait_for(reader.readexactly(3), 15)) == b"\x16\x03\x03"
    finally:
        writer.close()
    assert await h1_get(edge) == 200


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"\x16\x03\x01\x00\x05garbage", DECODE_ERROR_ALERT),
        (b"\x16\x03\x01\x00\x00", DECODE_ERROR_ALERT),
        (b"\x17\x03\x03\x00\x05hello", b""),
        (b"GET /ok HTTP/1.1\r\nHost: www.beta.test\r\n\r\n", b""),
    ],
    ids=["not-a-hello", "empty-record", "application-data", "plain-http"],
)
async def test_garbage_first_is_closed_at_once(edge: Edge, data: bytes, answer: bytes) -> None:
    got, took = await raw_exchange(edge.tls, data)
    assert got == answer
    assert took < HANDSHAKE_TIMEOUT / 2
    assert await h2_get(edge) == 200


async def test_slow_and_silent_clients_are_closed_within_the_timeout_while_others_are_served(
    edge: Edge,
) -> None:
    hello = client_hello(HOST)
    silent = asyncio.create_task(raw_exchange(edge.tls, b""))
    half = asyncio.create_task(raw_exchange(edge.tls, hello[: len(hello) // 2]))
    header_only = asyncio.create_task(raw_exchange(edge.tls, hello[:5]))
    # a hello cut short and then closed by the client: nothing to wait for
    host, port = split(edge.tls)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(hello[:100])
    writer.write_eof()
    # closed (with a FIN, the hello read out first) without waiting for the timeout
    assert await asyncio.wait_for(reader.read(), HANDSHAKE_TIMEOUT / 2) == b""
    writer.close()
    # meanwhile the edge serves everyone else
    for _ in range(5):
        assert await h2_get(edge) == 200
        assert await h1_get(edge) == 200
    for task in (silent, half, header_only):
        answer, took = await task
        assert answer == b""
        assert HANDSHAKE_TIMEOUT - 1 < took < HANDSHAKE_TIMEOUT + 5


async def test_handshakes_count_against_the_connection_cap(capped: Edge) -> None:
    host, port = split(capped.tls)
    before = await capped.metric("edgeshield_connections_refused_total")
    held = [await asyncio.open_connection(host, port) for _ in range(CAP)]
    for _, writer in held:
        # a hello begun (the kernel hands a connection over once it has sent something)
        writer.write(client_hello(HOST)[:5])
    try:
        # each held connection is in its hello: the next is over the cap, closed at once
        answer, took = await raw_exchange(capped.tls, client_hello(HOST))
        assert answer == b""
        assert took < HANDSHAKE_TIMEOUT / 2
        assert await capped.metric("edgeshield_connections_refused_total") == before + 1
    finally:
        for _, writer in held:
            writer.close()
    # the held ones closed, their places come back

    async def served() -> bool:
        try:
            return await h1_get(capped) == 200
        except (ssl.SSLError, ConnectionError):
            return False

    await eventually(served, "a TLS client served once the held connections closed")
