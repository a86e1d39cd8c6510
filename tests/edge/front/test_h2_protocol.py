"""H2Protocol in front of a real engine (tests/support/engine_harness.py), on 127.0.0.1.

The protocol is served without TLS here (HTTP/2 with prior knowledge) so each test
drives the frames itself with the `h2` library as a client: windows, resets, heads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import h2.events
import pytest

from edge.front.h2_protocol import H2Limits, H2Protocol
from edge.metrics import NodeMetrics
from tests.support.engine_harness import HOST, CacheUnderTest, running_cache
from tests.support.tls_fleet import H2Client

pytestmark = pytest.mark.timeout(60)


@dataclass
class Served:
    cache: CacheUnderTest
    address: str
    metrics: NodeMetrics

    async def client(self) -> H2Client:
        host, _, port = self.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return H2Client(reader, writer)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with running_cache() as cache:
        metrics = NodeMetrics("edge1", "edge")
        limits = H2Limits(reset_limit=20, reset_window=10.0)
        server = await asyncio.get_running_loop().create_server(
            lambda: H2Protocol(cache.engine, metrics=metrics, h2_limits=limits, scheme="http"),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            yield Served(cache, f"127.0.0.1:{port}", metrics)
        finally:
            server.close()


async def test_a_stored_answer_is_a_hit_on_the_next_stream(served: Served) -> None:
    served.cache.origin.responds("/page", cache_control="max-age=60", body=b"page")
    client = await served.client()
    try:
        first = await client.get(HOST, "/page")
        second = await client.get(HOST, "/page")
    finally:
        client.close()
    assert (first.status, first.body) == (200, b"page")
    assert "stored" in first.headers["cache-status"]
    assert "hit" in second.headers["cache-status"]
    assert second.headers["cache-status"].endswith("; proto=h2")
    assert served.cache.origin.count("/page") == 1


async def test_authority_and_split_cookies_reach_the_origin_as_http1_fields(
    served: Served,
) -> None:
    served.cache.origin.responds("/private", body=b"p")
    client = await served.client()
    try:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", HOST),
                (":path", "/private"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ],
            end_stream=True,
        )
        client.writer.write(client.conn.data_to_send())
        ended = False
        while not ended:
            for event in await client.events():
                ended = ended or isinstance(event, h2.events.StreamEnded)
    finally:
        client.close()
    seen = served.cache.origin.last_headers("/private")
    # RFC 9113 8.2.3 and 8.3.1
    assert seen["Cookie"] == "a=1; b=2"
    assert seen["Host"] == HOST


async def test_an_answer_is_never_sent_past_the_clients_window(served: Served) -> None:
    body = bytes(range(256)) * 2048  # 512 KiB
    served.cache.origin.responds("/large", cache_control="max-age=60", body=body)
    client = await served.client()
    try:
        stream_id = client.request(HOST, "/large")
        received = bytearray()
        ended = False
        while not ended:
            for event in await client.events():
                # the client's h2 raises FlowControlError on any frame past its window
                if isinstance(event, h2.events.DataReceived):
                    received += event.data
                    client.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    client.writer.write(client.conn.data_to_send())
                ended = ended or isinstance(event, h2.events.StreamEnded)
    finally:
        client.close()
    assert bytes(received) == body


async def test_a_request_body_larger_than_a_window_is_read_as_the_engine_takes_it(
    served: Served,
) -> None:
    served.cache.origin.responds("/upload", body=b"taken")
    payload = b"x" * (1024 * 1024)
    client = await served.client()
    try:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", HOST),
                (":path", "/upload"),
                ("content-length", str(len(payload))),
            ],
        )
        client.writer.write(client.conn.data_to_send())
        sent = 0
        status = 0
        ended = False
        while not ended:
            window = min(
                client.conn.local_flow_control_window(stream_id),
                client.conn.max_outbound_frame_size,
            )
            if sent < len(payload) and window > 0:
                piece = payload[sent : sent + window]
                sent += len(piece)
                client.conn.send_data(stream_id, piece, end_stream=sent == len(payload))
                client.writer.write(client.conn.data_to_send())
                continue
            # the rest waits for the edge to give windows back
            for event in await client.events():
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                ended = ended or isinstance(event, h2.events.StreamEnded)
    finally:
        client.close()
    assert sent == len(payload)
    assert status == 200


async def test_rapid_resets_get_goaway(served: Served) -> None:
    served.cache.origin.responds("/r", cache_control="max-age=60", body=b"r")
    client = await served.client()
    try:
        for _ in range(40):
            stream_id = client.request(HOST, "/r")
            client.conn.reset_stream(stream_id)
        client.writer.write(client.conn.data_to_send())
        while client.goaway is None:
            await client.events()
    finally:
        client.close()
    assert client.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert served.metrics.h2_goaways.value == 1


async def test_head_ends_the_stream_with_the_head(served: Served) -> None:
    served.cache.origin.responds("/h", cache_control="max-age=60", body=b"12345")
    client = await served.client()
    try:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [(":method", "HEAD"), (":scheme", "https"), (":authority", HOST), (":path", "/h")],
            end_stream=True,
        )
        client.writer.write(client.conn.data_to_send())
        events: list[h2.events.Event] = []
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            events += await client.events()
    finally:
        client.close()
    assert not [e for e in events if isinstance(e, h2.events.DataReceived) and e.data]


async def test_early_hints_go_out_as_an_informational_head_before_the_final_one() -> None:
    # RFC 9113 8.1: a 103 (RFC 8297) is a HEADERS frame ahead of the final answer's
    async with running_cache(early_hints=True) as cache:
        metrics = NodeMetrics("edge1", "edge")
        server = await asyncio.get_running_loop().create_server(
            lambda: H2Protocol(cache.engine, metrics=metrics, scheme="http"), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        cache.origin.responds(
            "/hinted",
            cache_control="no-cache",
            body=b"<html></html>",
            etag='"h1"',
            Link="</style.css>; rel=preload; as=style",
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = H2Client(reader, writer)
        try:
            first = await client.get(HOST, "/hinted")
            second = await client.get(HOST, "/hinted")  # stored, revalidated: hints first
        finally:
            client.close()
            server.close()
    assert first.informational == ()
    assert [head[":status"] for head in second.informational] == ["103"]
    assert second.informational[0]["link"] == "</style.css>; rel=preload; as=style"
    assert (second.status, second.body) == (200, b"<html></html>")
