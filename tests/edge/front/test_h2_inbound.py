"""HTTP/2's inbound lane (edge/front/h2_inbound.py): its checks of a request as values,
its header-block table, and the lane in `H2Protocol` in front of a real engine
(tests/support/engine_harness.py) on 127.0.0.1, with the `h2` library as the client.
The same attacks over TLS to a real edge process are tests/security/test_h2_lane.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from edge.front.h2_exchange import request_head
from edge.front.h2_hits import H2Hits
from edge.front.h2_inbound import LaneHeads, is_plain_request
from edge.front.h2_protocol import H2Protocol
from edge.front.h2_stream import server_connection
from edge.metrics import NodeMetrics
from tests.support.engine_harness import HOST, CacheUnderTest, running_cache
from tests.support.h2_lane import (
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PATH_NAME,
    RST_STREAM,
    WINDOW_UPDATE,
    answer_of,
    answers_of,
    frame,
    indexed,
    literal,
    literal_name,
    next_id,
    request_block,
    send_raw,
    table_size,
)
from tests.support.tls_fleet import H2Client
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

PLAIN = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test")]
PLAIN += [(b":path", b"/x"), (b"accept", b"*/*"), (b"user-agent", b"t")]


def with_field(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [*PLAIN, (name, value)]


def test_a_plain_request_takes_the_lane() -> None:
    assert is_plain_request(PLAIN)
    assert is_plain_request(with_field(b"cookie", b"a=1"))
    assert is_plain_request(with_field(b"x-empty", b""))


@pytest.mark.parametrize(
    "fields",
    [
        with_field(b"X-Upper", b"1"),
        with_field(b"connection", b"close"),
        with_field(b"transfer-encoding", b"chunked"),
        with_field(b"te", b"trailers"),
        with_field(b"host", b"a.test"),
        with_field(b"content-length", b"0"),
        with_field(b"x-a", b"1\r\nx-b: 2"),
        with_field(b"x-a", b"1\x00"),
        with_field(b"x-a", b" 1"),
        with_field(b"x-a", b"1\t"),
        with_field(b"x:a", b"1"),
        with_field(b"", b"1"),
        with_field(b":path", b"/y"),
        with_field(b":status", b"200"),
        [*PLAIN[:3], (b"accept", b"*/*"), (b":path", b"/x")],
        [p for p in PLAIN if p[0] != b":authority"],
        [p for p in PLAIN if p[0] != b":scheme"],
        [(b":path", b"") if p[0] == b":path" else p for p in PLAIN],
        [(b":path", b"*") if p[0] == b":path" else p for p in PLAIN],
    ],
)
def test_anything_else_is_left_to_h2(fields: list[tuple[bytes, bytes]]) -> None:
    assert not is_plain_request(fields)


def _heads(conn: h2.connection.H2Connection) -> LaneHeads:
    return LaneHeads(conn, lambda fields: request_head(fields, "127.0.0.1", "https"))


def test_a_block_is_kept_only_while_the_table_is_as_it_was() -> None:
    conn = server_connection()
    heads = _heads(conn)
    base = indexed(2) + indexed(7) + literal(1, b"a.test")
    first, _ = heads.request(base + literal(PATH_NAME, b"/a", index=True))
    again = base + indexed(62)
    fields, head = heads.request(again)
    assert head is not None and head.target == "/a"
    # the same bytes once more: the kept answer, the same objects
    assert heads.request(again)[0] is fields
    # RFC 7541 6.3: the table emptied and /b put in: the same bytes now name /b
    heads.request(table_size(0) + table_size(4096) + base + literal(PATH_NAME, b"/b", index=True))
    fields, head = heads.request(again)
    assert head is not None and head.target == "/b"
    assert (b":path", b"/a") in first


def test_a_block_that_changes_the_table_is_never_kept() -> None:
    conn = server_connection()
    heads = _heads(conn)
    block = indexed(2) + indexed(7) + literal(1, b"a.test", index=True) + literal(PATH_NAME, b"/")
    heads.request(block)
    heads.request(block)
    # replaying it would have skipped the second insertion
    assert len(conn.decoder.header_table.dynamic_entries) == 2


def test_a_malformed_block_is_h2s_protocol_error() -> None:
    conn = server_connection()
    with pytest.raises(h2.exceptions.ProtocolError):
        _heads(conn).request(indexed(200))


@dataclass
class Served:
    cache: CacheUnderTest
    address: str
    hits: H2Hits
    made: list[H2Protocol]

    async def client(self) -> H2Client:
        host, _, port = self.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return H2Client(reader, writer)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with running_cache() as cache:
        metrics = NodeMetrics("edge1", "edge")
        hits = H2Hits()
        made: list[H2Protocol] = []

        def make() -> H2Protocol:
            made.append(H2Protocol(cache.engine, metrics=metrics, scheme="http", hits=hits))
            return made[-1]

        server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield Served(cache, f"127.0.0.1:{port}", hits, made)
        finally:
            server.close()


async def test_hits_are_answered_by_the_lane_without_an_h2_stream(served: Served) -> None:
    served.cache.origin.responds("/hot", cache_control="max-age=60", body=b"hot body")
    client = await served.client()
    try:
        await client.get(HOST, "/hot")
        await client.get(HOST, "/hot")
        before = served.hits.lane_answers
        answers = [await client.get(HOST, "/hot") for _ in range(5)]
        conn = served.made[0]._conn
        assert served.hits.lane_answers == before + 5
        # h2 knows the highest stream id and nothing else of them
        assert conn.highest_inbound_stream_id == client.conn.highest_outbound_stream_id
        assert not [s for s in conn.streams.values() if not s.closed]
    finally:
        client.close()
    for answer in answers:
        assert (answer.status, answer.body) == (200, b"hot body")
        assert answer.headers["content-length"] == "8"
        assert answer.headers["cache-status"].endswith("; proto=h2")
    assert served.cache.origin.count("/hot") == 1


async def test_reset_and_window_update_after_a_lane_answer_are_ignored(served: Served) -> None:
    served.cache.origin.responds("/hot", cache_control="max-age=60", body=b"hot body")
    client = await served.client()
    try:
        await client.get(HOST, "/hot")
        await client.get(HOST, "/hot")
        before = served.hits.lane_answers
        stream_id = next_id(client)
        send_raw(
            client, frame(HEADERS, END_HEADERS | END_STREAM, stream_id, request_block(HOST, "/hot"))
        )
        assert (await answer_of(client, stream_id)).body == b"hot body"
        assert served.hits.lane_answers == before + 1
        # RFC 9113 5.1: frames on a stream closed after END_STREAM are ignored
        send_raw(
            client,
            frame(RST_STREAM, 0, stream_id, int(h2.errors.ErrorCodes.CANCEL).to_bytes(4, "big")),
            frame(WINDOW_UPDATE, 0, stream_id, (100).to_bytes(4, "big")),
        )
        answer = await client.get(HOST, "/hot")
        assert answer.body == b"hot body"
        assert client.goaway is None
    finally:
        client.close()


async def test_a_hit_past_the_window_is_left_to_h2_and_sent_as_it_opens(
    served: Served,
) -> None:
    body = bytes(range(256)) * 300  # 75 KiB: past the client's 64 KiB windows
    served.cache.origin.responds("/big", cache_control="max-age=60", body=body)
    client = await served.client()
    try:
        await client.get(HOST, "/big")
        before = served.hits.lane_answers
        answer = await client.get(HOST, "/big")
        assert served.hits.lane_answers == before
    finally:
        client.close()
    assert answer.body == body
    assert "hit" in answer.headers["cache-status"]


async def test_a_request_that_is_not_plain_is_served_by_h2_and_the_engine(
    served: Served,
) -> None:
    served.cache.origin.responds("/hot", cache_control="max-age=60", body=b"hot body")
    client = await served.client()
    try:
        await client.get(HOST, "/hot")
        await client.get(HOST, "/hot")
        before = served.hits.lane_answers
        stream_id = next_id(client)
        # a Host field beside :authority (the same value: legal, not the lane's case)
        block = request_block(HOST, "/hot", literal_name(b"host", HOST.encode()))
        send_raw(client, frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
        answer = await answer_of(client, stream_id)
        assert (answer.status, answer.body) == (200, b"hot body")
        assert served.hits.lane_answers == before
    finally:
        client.close()


async def test_a_turn_of_many_requests_does_not_gather_their_answers(served: Served) -> None:
    body = bytes(range(256)) * 400  # 100 KiB
    served.cache.origin.responds("/big", cache_control="max-age=60", body=body)
    client = await served.client()
    try:
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        client.writer.write(client.conn.data_to_send())
        await client.get(HOST, "/big")
        await client.get(HOST, "/big")
        before = served.hits.lane_answers
        # 300 hits of 100 KiB asked for at once (30 MiB) by a client that never reads:
        # the windows allow all of it, the transport does not
        block = request_block(HOST, "/big")
        send_raw(
            client,
            *(frame(HEADERS, END_HEADERS | END_STREAM, next_id(client), block) for _ in range(300)),
        )
        await eventually(lambda: served.made[0]._paused, "the transport full")
        await eventually(lambda: served.cache.engine.metrics.hits.value > 100, "hits counted")
        # written while the transport took them (the socket's buffers), then no more
        assert (served.hits.lane_answers - before) * len(body) < 16 * 1024 * 1024
    finally:
        client.close()


async def test_frames_cut_at_every_byte_are_read_whole(served: Served) -> None:
    served.cache.origin.responds("/hot", cache_control="max-age=60", body=b"hot body")
    warm = await served.client()
    try:
        await warm.get(HOST, "/hot")
        await warm.get(HOST, "/hot")
    finally:
        warm.close()
    host, _, port = served.address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    client = H2Client(reader, writer)  # writes its preface and SETTINGS
    try:
        ids = [next_id(client) for _ in range(3)]
        data = b"".join(
            frame(HEADERS, END_HEADERS | END_STREAM, n, request_block(HOST, "/hot")) for n in ids
        )
        before = served.hits.lane_answers
        # a byte per write: the edge's reads end anywhere in a frame head or payload
        for offset in range(len(data)):
            writer.write(data[offset : offset + 1])
            await writer.drain()
        answers = list((await answers_of(client, ids)).values())
        assert served.hits.lane_answers == before + 3
    finally:
        client.close()
    for answer in answers:
        assert (answer.status, answer.body) == (200, b"hot body")
