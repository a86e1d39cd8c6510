"""Attacks on HTTP/2's inbound lane (edge/front/h2_inbound.py), over TLS to a real edge.

The lane reads a HEADERS frame that ends its stream without `h2` and answers a fresh
hit before `h2` has seen the stream. Each test here sends what would be answered by
the lane if it were honest, but is not: a head that decodes to a malformed request,
a stream id that is not new, a CONTINUATION after a complete block, frames on the
streams the lane closed, more streams than allowed, a rapid-reset flood, header
blocks too large, dynamic-table size updates. Each is checked as `h2` would answer
it (RFC 9113), and the edge keeps serving a clean client afterwards.

One edge process for the module (tests/support/tls_fleet.py) in front of an origin
that records every request; frames are written by hand (tests/support/h2_lane.py)
where a well-behaved client would refuse to send them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import h2.errors
import h2.events
import pytest

from tests.support.h2_lane import (
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PATH_NAME,
    PRIORITY,
    RST_STREAM,
    WINDOW_UPDATE,
    answer_of,
    frame,
    indexed,
    literal,
    literal_name,
    next_id,
    open_by_hand,
    refusal,
    request_block,
    send_raw,
    table_size,
)
from tests.support.processes import NodeProcess
from tests.support.raw_client import EchoOrigin
from tests.support.tls_fleet import H2Client, TlsFiles, tls_fleet_toml

pytestmark = pytest.mark.timeout(60)

HOST = "www.beta.test"
#: the first entry of the dynamic table (RFC 7541 2.3.3)
DYNAMIC = 62
PROTOCOL_ERROR = int(h2.errors.ErrorCodes.PROTOCOL_ERROR)
ENHANCE_YOUR_CALM = int(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)


class Edge:
    def __init__(self, root: Path, origin: EchoOrigin) -> None:
        self.files = TlsFiles(root / "tls")
        text, self.addresses = tls_fleet_toml(root, self.files, origin.url)
        (root / "fleet.toml").write_text(text)
        self.process = NodeProcess(
            ["edge", "--config", str(root / "fleet.toml"), "--node", "edge1"], root / "edge.log"
        )

    async def client(self) -> H2Client:
        return await H2Client.connect(
            self.addresses["edge_tls"], HOST, self.files.client_context(("h2",))
        )


ROUTES = {f"/{name}": {"Cache-Control": "max-age=600"} for name in ("a", "b", "ok", "slow")}


@pytest.fixture(scope="module")
def origin() -> Iterator[EchoOrigin]:
    server = EchoOrigin(routes=dict(ROUTES)).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, origin: EchoOrigin) -> Iterator[Edge]:
    node = Edge(tmp_path_factory.mktemp("h2-lane"), origin)
    node.process.start()
    try:
        for key in ("edge", "edge_tls", "edge_admin"):
            node.process.wait_listening(node.addresses[key])
        yield node
    finally:
        node.process.stop()


@pytest.fixture
async def warm(edge: Edge) -> AsyncIterator[H2Client]:
    """A connection on which /ok, /a and /b are fresh hits of its worker's memory tier
    (each fetched until a hit, then once more: the lane's case)."""
    client = await edge.client()
    try:
        for path in ("/ok", "/a", "/b"):
            for _ in range(5):
                answer = await client.get(HOST, path)
                assert answer.status == 200
                if "hit" in answer.headers["cache-status"]:
                    break
            assert "hit" in (await client.get(HOST, path)).headers["cache-status"]
        yield client
    finally:
        client.close()


def target_of(body: bytes) -> str:
    target: str = json.loads(body)["target"]
    return target


async def clean_get(edge: Edge) -> None:
    client = await edge.client()
    try:
        answer = await client.get(HOST, "/ok")
        assert (answer.status, target_of(answer.body)) == (200, "/ok")
    finally:
        client.close()


#: header blocks of one frame, lane-shaped (END_HEADERS|END_STREAM on a new stream),
#: that decode to requests RFC 9113 8.2-8.3 calls malformed
MALFORMED = [
    ("uppercase-name", request_block(HOST, "/ok", literal_name(b"X-Upper", b"1"))),
    ("connection-field", request_block(HOST, "/ok", literal_name(b"connection", b"close"))),
    ("te-not-trailers", request_block(HOST, "/ok", literal_name(b"te", b"gzip"))),
    ("value-with-cr-lf", request_block(HOST, "/ok", literal_name(b"x-a", b"1\r\nx-b: 2"))),
    ("value-spaced", request_block(HOST, "/ok", literal_name(b"x-a", b" 1"))),
    ("name-with-colon", request_block(HOST, "/ok", literal_name(b"x:a", b"1"))),
    ("path-twice", request_block(HOST, "/ok", literal(PATH_NAME, b"/a"))),
    ("empty-path", indexed(2) + indexed(7) + literal(1, HOST.encode()) + literal(PATH_NAME, b"")),
    ("no-path", indexed(2) + indexed(7) + literal(1, HOST.encode())),
    (
        "pseudo-after-regular",
        indexed(2)
        + indexed(7)
        + literal_name(b"x-a", b"1")
        + literal(1, HOST.encode())
        # :path after a regular field
        + literal(PATH_NAME, b"/ok"),
    ),
    ("unknown-pseudo", request_block(HOST, "/ok", literal_name(b":extra", b"1"))),
    ("host-mismatch", request_block(HOST, "/ok", literal_name(b"host", b"other.test"))),
]


@pytest.mark.parametrize(("name", "block"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_a_lane_shaped_head_that_is_malformed_is_refused(
    edge: Edge, warm: H2Client, origin: EchoOrigin, name: str, block: bytes
) -> None:
    before = len(origin.seen)
    stream_id = next_id(warm)
    send_raw(warm, frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
    answered, code = await refusal(warm)
    assert stream_id not in answered
    assert code == PROTOCOL_ERROR
    assert len(origin.seen) == before
    await clean_get(edge)


async def test_a_stream_id_that_is_not_new_is_refused(edge: Edge, warm: H2Client) -> None:
    first = next_id(warm)
    send_raw(warm, frame(HEADERS, END_HEADERS | END_STREAM, first, request_block(HOST, "/ok")))
    assert target_of((await answer_of(warm, first)).body) == "/ok"
    # RFC 9113 5.1.1: a stream id at or below one already used is a connection error
    send_raw(warm, frame(HEADERS, END_HEADERS | END_STREAM, first, request_block(HOST, "/a")))
    answered, code = await refusal(warm)
    assert not answered
    assert code is not None and code != int(h2.errors.ErrorCodes.NO_ERROR)
    await clean_get(edge)


async def test_a_lower_stream_id_never_used_is_refused(edge: Edge, warm: H2Client) -> None:
    high = warm.conn.get_next_available_stream_id() + 10
    open_by_hand(warm, high)
    send_raw(warm, frame(HEADERS, END_HEADERS | END_STREAM, high, request_block(HOST, "/ok")))
    assert (await answer_of(warm, high)).status == 200
    send_raw(warm, frame(HEADERS, END_HEADERS | END_STREAM, high - 4, request_block(HOST, "/a")))
    answered, code = await refusal(warm)
    assert not answered
    assert code == PROTOCOL_ERROR
    await clean_get(edge)


async def test_an_even_stream_id_is_refused(edge: Edge, warm: H2Client) -> None:
    even = warm.conn.get_next_available_stream_id() + 1
    send_raw(warm, frame(HEADERS, END_HEADERS | END_STREAM, even, request_block(HOST, "/ok")))
    answered, code = await refusal(warm)
    assert not answered
    assert code == PROTOCOL_ERROR
    await clean_get(edge)


async def test_continuation_after_a_complete_head_is_refused(edge: Edge, warm: H2Client) -> None:
    stream_id = next_id(warm)
    send_raw(
        warm,
        frame(HEADERS, END_HEADERS | END_STREAM, stream_id, request_block(HOST, "/ok")),
        # RFC 9113 6.10: CONTINUATION only follows a block without END_HEADERS
        frame(CONTINUATION, END_HEADERS, stream_id, literal_name(b"x-late", b"1")),
    )
    _, code = await refusal(warm)
    # a connection error: h2 names it STREAM_CLOSED (the stream was answered and
    # closed), RFC 9113 6.10 PROTOCOL_ERROR; either ends the connection
    assert code in (PROTOCOL_ERROR, int(h2.errors.ErrorCodes.STREAM_CLOSED))
    await clean_get(edge)


async def test_a_head_split_into_continuation_is_answered(edge: Edge, warm: H2Client) -> None:
    stream_id = next_id(warm)
    block = request_block(HOST, "/a", literal_name(b"x-split", b"1"))
    send_raw(
        warm,
        frame(HEADERS, END_STREAM, stream_id, block[:5]),
        frame(CONTINUATION, 0, stream_id, block[5:9]),
        frame(CONTINUATION, END_HEADERS, stream_id, block[9:]),
    )
    answer = await answer_of(warm, stream_id)
    assert (answer.status, target_of(answer.body)) == (200, "/a")


async def test_a_head_with_priority_is_answered_and_a_self_dependency_refused(
    edge: Edge, warm: H2Client
) -> None:
    stream_id = next_id(warm)
    # RFC 9113 6.2: with PRIORITY, 4 bytes of dependency and a weight precede the block
    priority = (0).to_bytes(4, "big") + bytes((15,))
    send_raw(
        warm,
        frame(
            HEADERS,
            END_HEADERS | END_STREAM | PRIORITY,
            stream_id,
            priority + request_block(HOST, "/b"),
        ),
    )
    assert target_of((await answer_of(warm, stream_id)).body) == "/b"
    stream_id = next_id(warm)
    itself = stream_id.to_bytes(4, "big") + bytes((15,))
    send_raw(
        warm,
        frame(
            HEADERS,
            END_HEADERS | END_STREAM | PRIORITY,
            stream_id,
            itself + request_block(HOST, "/b"),
        ),
    )
    answered, code = await refusal(warm)
    assert stream_id not in answered
    assert code == PROTOCOL_ERROR
    await clean_get(edge)


async def test_reset_and_window_update_on_answered_streams_are_ignored(
    edge: Edge, warm: H2Client
) -> None:
    done = []
    for path in ("/ok", "/a", "/b"):
        stream_id = next_id(warm)
        send_raw(
            warm, frame(HEADERS, END_HEADERS | END_STREAM, stream_id, request_block(HOST, path))
        )
        assert target_of((await answer_of(warm, stream_id)).body) == path
        done.append(stream_id)
    # RFC 9113 5.1: WINDOW_UPDATE and RST_STREAM may arrive on a stream the edge
    # closed with END_STREAM; they are ignored, never a connection error
    for stream_id in done:
        send_raw(
            warm,
            frame(RST_STREAM, 0, stream_id, int(h2.errors.ErrorCodes.CANCEL).to_bytes(4, "big")),
            frame(WINDOW_UPDATE, 0, stream_id, (1000).to_bytes(4, "big")),
        )
    answer = await warm.get(HOST, "/ok")
    assert (answer.status, target_of(answer.body)) == (200, "/ok")
    assert warm.goaway is None


async def test_hits_answered_at_once_never_count_as_open_streams(
    edge: Edge, warm: H2Client
) -> None:
    # the client ignores our SETTINGS: 150 requests at once against 100 allowed; the
    # hits are answered (their streams closed) as they are read
    ids = [next_id(warm) for _ in range(150)]
    block = request_block(HOST, "/ok")
    send_raw(warm, *(frame(HEADERS, END_HEADERS | END_STREAM, n, block) for n in ids))
    answered: set[int] = set()
    while len(answered) < len(ids):
        for event in await warm.events():
            assert not isinstance(event, h2.events.StreamReset), event
            if isinstance(event, h2.events.StreamEnded):
                answered.add(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                warm.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                warm.writer.write(warm.conn.data_to_send())
        assert warm.goaway is None
    assert answered == set(ids)


async def test_streams_left_open_past_the_limit_are_refused(edge: Edge, warm: H2Client) -> None:
    # misses (each a new path) hold their streams while the origin answers: the
    # 101st open stream is over SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 5.1.2)
    frames = []
    for n in range(150):
        stream_id = next_id(warm)
        block = request_block(HOST, f"/slow?n={n}")
        frames.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
    send_raw(warm, *frames)
    refused = False
    while not refused:
        for event in await warm.events():
            if isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                refused = True
    assert refused
    await clean_get(edge)


async def test_rapid_reset_of_lane_answered_streams_gets_goaway(edge: Edge, warm: H2Client) -> None:
    frames = []
    for _ in range(400):
        stream_id = next_id(warm)
        frames.append(
            frame(HEADERS, END_HEADERS | END_STREAM, stream_id, request_block(HOST, "/ok"))
        )
        frames.append(
            frame(RST_STREAM, 0, stream_id, int(h2.errors.ErrorCodes.CANCEL).to_bytes(4, "big"))
        )
    send_raw(warm, *frames)
    _, code = await refusal(warm)
    assert code == ENHANCE_YOUR_CALM
    await clean_get(edge)


async def test_a_small_block_that_decodes_past_the_header_list_limit_is_refused(
    edge: Edge, warm: H2Client, origin: EchoOrigin
) -> None:
    before = len(origin.seen)
    stream_id = next_id(warm)
    # an HPACK bomb in one frame: 4 KiB put into the dynamic table once, then named
    # by its index 20 times (80 KiB decoded against the 64 KiB announced)
    bomb = literal_name(b"x-bomb", b"a" * 4000, index=True) + indexed(DYNAMIC) * 20
    block = request_block(HOST, "/ok", bomb)
    assert len(block) < 16384
    send_raw(warm, frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
    answered, code = await refusal(warm)
    assert stream_id not in answered
    assert code == ENHANCE_YOUR_CALM
    # nothing of the bomb went on; the only requests the origin may see meanwhile are
    # the earlier test's misses of /slow, still queued behind the origin's connection cap
    assert [
        seen.target for seen in origin.seen[before:] if not seen.target.startswith("/slow")
    ] == []
    await clean_get(edge)


async def test_a_frame_past_the_frame_size_is_refused_without_its_payload(
    edge: Edge, warm: H2Client
) -> None:
    stream_id = next_id(warm)
    block = request_block(HOST, "/ok", literal_name(b"x-big", b"a" * 20000))
    # the head and a little of the payload: the edge must not wait for the rest
    whole = frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
    send_raw(warm, whole[:1000])
    answered, code = await refusal(warm)
    assert not answered
    assert code == int(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
    await clean_get(edge)


async def test_dynamic_table_updates_are_followed_and_stale_blocks_not_reused(
    edge: Edge, warm: H2Client
) -> None:
    # warm's own encoder has a table: a fresh connection written by hand instead
    client = await edge.client()
    try:
        for path in ("/a", "/b"):
            assert "hit" in (await client.get(HOST, path)).headers["cache-status"]
            assert "hit" in (await client.get(HOST, path)).headers["cache-status"]
        base = indexed(2) + indexed(7) + literal(1, HOST.encode())
        # /a into the dynamic table, then named by its index alone (RFC 7541 6.1)
        sends = [
            (base + literal(PATH_NAME, b"/a", index=True), "/a"),
            (base + indexed(DYNAMIC), "/a"),
            (base + indexed(DYNAMIC), "/a"),
            # RFC 7541 6.3, 4.2: the table emptied and resized, then /b put in: the same
            # bytes as before now name /b
            (table_size(0) + table_size(4096) + base + literal(PATH_NAME, b"/b", index=True), "/b"),
            (base + indexed(DYNAMIC), "/b"),
            (base + indexed(DYNAMIC), "/b"),
            # the table shrunk to one entry's room: putting /a in evicts /b
            (table_size(40) + base + literal(PATH_NAME, b"/a", index=True), "/a"),
            (base + indexed(DYNAMIC), "/a"),
        ]
        for block, path in sends:
            stream_id = next_id(client)
            send_raw(client, frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
            answer = await answer_of(client, stream_id)
            assert (answer.status, target_of(answer.body)) == (200, path)
        # RFC 7541 4.2: a size over SETTINGS_HEADER_TABLE_SIZE is a decoding error
        # (h2 answers decoding errors with PROTOCOL_ERROR; the lane answers as h2)
        stream_id = next_id(client)
        block = table_size(8192) + base + literal(PATH_NAME, b"/a")
        send_raw(client, frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
        answered, code = await refusal(client)
        assert stream_id not in answered
        assert code == PROTOCOL_ERROR
    finally:
        client.close()
    await clean_get(edge)
