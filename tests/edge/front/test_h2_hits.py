"""HTTP/2 answers framed without the h2 library's encoder (edge/front/h2_hits.py).

The HPACK blocks and frames are read back by h2 and hpack themselves as the client
(the peer every browser's stack agrees with); the hit lane runs in front of a real
engine (tests/support/engine_harness.py) on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hpack import Decoder
from multidict import CIMultiDict

from edge.front.h2_hits import (
    FieldEncoder,
    H2Hits,
    data_frame,
    encode_field,
    headers_frame,
    send_window,
    sent_data,
    sent_headers,
)
from edge.front.h2_protocol import H2Protocol
from edge.front.h2_stream import H2Limits, server_connection, start_connection
from edge.hotlane import PreparedHit
from edge.metrics import NodeMetrics
from edge.store import BodyRef, StoredEntry
from tests.support.engine_harness import HOST, CacheUnderTest, running_cache
from tests.support.tls_fleet import H2Client
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

FIELDS = [
    (":status", "200"),  # a whole static-table field (RFC 7541 Appendix A, index 8)
    (":status", "203"),  # a static name with another value
    ("content-type", "text/html"),
    ("cache-status", "edge1; hit; ttl=59; proto=h2"),  # a name not in the table
    ("set-cookie", "a=1"),  # never indexed (RFC 7541 6.2.3)
    ("x-long", "v" * 200),  # a length past the 7-bit prefix (RFC 7541 5.1)
    ("x-longer", "w" * 20_000),  # a length of three integer bytes
    ("etag", '"caf\u00e9"'),
]


def test_encoded_fields_decode_to_the_same_fields() -> None:
    decoder = Decoder()
    decoder.max_header_list_size = 1 << 20
    decoded = decoder.decode(FieldEncoder().block(FIELDS), raw=True)
    assert [(n.decode(), v.decode()) for n, v in decoded] == FIELDS


def test_fields_never_enter_a_dynamic_table() -> None:
    decoder = Decoder()
    decoder.decode(FieldEncoder().block(FIELDS[:6]))
    assert len(decoder.header_table.dynamic_entries) == 0
    # the whole field is one byte when the static table holds it
    assert encode_field(":status", "200") == b"\x88"


def _pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection, int]:
    """A client and our server connection with one request stream open on both."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server = server_connection()
    start_connection(server, H2Limits())
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    stream_id = client.get_next_available_stream_id()
    client.send_headers(
        stream_id,
        [(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/")],
        end_stream=True,
    )
    server.receive_data(client.data_to_send())
    return client, server, stream_id


def test_a_head_larger_than_a_frame_goes_out_in_continuation_frames() -> None:
    client, server, stream_id = _pair()
    fields = [(":status", "200"), ("x-a", "a" * 20_000), ("x-b", "b" * 20_000)]
    sent_headers(server, stream_id, end_stream=False)
    frames = headers_frame(
        stream_id, FieldEncoder().block(fields), server.max_outbound_frame_size, end_stream=False
    )
    assert len(frames) > 2 * server.max_outbound_frame_size
    body = b"x" * 1000
    assert send_window(server, stream_id) >= len(body)
    sent_data(server, stream_id, len(body), end_stream=True)
    events = client.receive_data(frames + data_frame(stream_id, len(body), end_stream=True) + body)
    heads = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert [(n.decode(), v.decode()) for n, v in heads[0].headers] == fields
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert data[0].data == body
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    # h2's accounting moved as its own send_data moves it
    assert server.outbound_flow_control_window == 65535 - len(body)


@pytest.fixture
async def served() -> AsyncIterator[tuple[CacheUnderTest, str]]:
    async with running_cache() as cache:
        metrics = NodeMetrics("edge1", "edge")
        server = await asyncio.get_running_loop().create_server(
            lambda: H2Protocol(cache.engine, metrics=metrics, scheme="http"), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        try:
            yield cache, f"127.0.0.1:{port}"
        finally:
            server.close()


async def _client(address: str) -> H2Client:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    return H2Client(reader, writer)


async def test_a_hot_hit_has_its_length_and_date_and_the_protocol(
    served: tuple[CacheUnderTest, str],
) -> None:
    cache, address = served
    cache.origin.responds("/hot", cache_control="max-age=60", body=b"hot body")
    client = await _client(address)
    try:
        first = await client.get(HOST, "/hot")
        hits = [await client.get(HOST, "/hot") for _ in range(3)]
    finally:
        client.close()
    assert "stored" in first.headers["cache-status"]
    for hit in hits:
        assert (hit.status, hit.body) == (200, b"hot body")
        assert "hit" in hit.headers["cache-status"]
        assert hit.headers["cache-status"].endswith("; proto=h2")
        # the hit lane's head: its length and a Date, as the HTTP/1.1 lane writes them
        assert hit.headers["content-length"] == "8"
        assert "date" in hit.headers
        assert "age" in hit.headers
    assert cache.origin.count("/hot") == 1


async def test_a_hot_hit_larger_than_the_clients_window_waits_for_it(
    served: tuple[CacheUnderTest, str],
) -> None:
    cache, address = served
    body = bytes(range(256)) * 40  # 10 KiB
    cache.origin.responds("/big", cache_control="max-age=60", body=body)
    client = await _client(address)
    try:
        await client.get(HOST, "/big")
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        client.writer.write(client.conn.data_to_send())
        # the client's h2 raises FlowControlError on any frame past its window
        hits = [await client.get(HOST, "/big") for _ in range(3)]
    finally:
        client.close()
    for hit in hits:
        assert hit.body == body
        assert "hit" in hit.headers["cache-status"]
        assert hit.headers["content-length"] == str(len(body))


async def test_a_hot_hit_waits_while_the_transport_is_paused() -> None:
    async with running_cache() as cache:
        made: list[H2Protocol] = []

        def make() -> H2Protocol:
            made.append(H2Protocol(cache.engine, metrics=NodeMetrics("e", "edge"), scheme="http"))
            return made[-1]

        server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cache.origin.responds("/held", cache_control="max-age=60", body=b"held body")
        client = await _client(f"127.0.0.1:{port}")
        try:
            await client.get(HOST, "/held")
            hits = cache.engine.metrics.hits.value
            # the transport says its buffer is full (what it calls past its high-water
            # mark): a hit answered now is queued on its open stream, not written
            made[0].pause_writing()
            stream_id = client.request(HOST, "/held")
            await eventually(lambda: cache.engine.metrics.hits.value > hits, "the hit")
            assert stream_id in made[0]._streams
            made[0].resume_writing()
            events: list[h2.events.Event] = []
            while not any(isinstance(e, h2.events.StreamEnded) for e in events):
                events += await client.events()
            data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
            assert data == b"held body"
            assert stream_id not in made[0]._streams
        finally:
            client.close()
            server.close()


def test_an_encoded_head_goes_with_its_prepared_hit() -> None:
    # the hot lane drops a prepared hit when its entry leaves the memory tier; a table
    # of encoded heads of its own kept up to 50,000 of them alive, bodies and all
    hits = H2Hits()

    def prepared_hit(n: int) -> PreparedHit:
        body = bytes(4096)
        entry = StoredEntry(f"k{n}", None, {"identity": BodyRef("identity", 4096, body, None)})
        headers = CIMultiDict({"Content-Type": "text/plain", "ETag": f'"{n}"'})
        return PreparedHit(entry, headers, body, 4096, "edge; hit")

    blocks = set()
    for n in range(200):
        prepared = prepared_hit(n)
        block, _ = hits.head(prepared)
        assert hits.head(prepared)[0] is block  # encoded once per prepared hit
        blocks.add(block)
    del prepared
    gc.collect()
    assert len(blocks) == 200
    assert not [o for o in gc.get_objects() if isinstance(o, PreparedHit)]
