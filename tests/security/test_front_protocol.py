"""The httptools front over raw sockets against a real edge process.

Pipelined requests are answered in order; `Expect: 100-continue` gets its 100 only
when the body is wanted; uploads of any size stream through with flat memory; a client
that stops reading mid-body holds no more of the edge's memory than its socket buffer,
the fill completes for everyone else, and the stalled client is cut after
`send_timeout`; every limit of the front (head size, field count, body timeout) ends
in a short answer and a close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from tests.support.connection_limits import node_metric
from tests.support.front import (
    HOST,
    BulkOrigin,
    open_raw,
    pattern,
    read_response,
    rss_bytes,
    running_edge,
)
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

SEND_TIMEOUT = 3.0
BODY_TIMEOUT = 1.5
MAX_FIELDS = 20
#: resident memory the edge may gain while 64 MiB pass through it
FLAT = 40 * 1024**2


class Edge:
    """The running edge and its origin."""

    def __init__(self, url: str, admin: str, node: NodeProcess, origin: BulkOrigin) -> None:
        self.url = url
        self.admin = admin
        self.node = node
        self.origin = origin

    @property
    def rss(self) -> int:
        assert self.node.proc is not None
        return rss_bytes(self.node.proc.pid)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    origin = BulkOrigin().start()
    keys = (
        f"send_timeout = {SEND_TIMEOUT}\nbody_timeout = {BODY_TIMEOUT}\n"
        f'max_header_fields = {MAX_FIELDS}\nmax_head_size = "4KiB"\n'
    )
    try:
        with running_edge(tmp_path_factory.mktemp("front"), origin.url, "httptools", keys) as (
            fleet,
            node,
        ):
            yield Edge(fleet.edges[0].url, fleet.edges[0].admin_url, node, origin)
    finally:
        origin.close()


def get(path: str, *fields: str, method: str = "GET", version: str = "1.1") -> bytes:
    extra = "".join(f"{field}\r\n" for field in fields)
    return f"{method} {path} HTTP/{version}\r\nHost: {HOST}\r\n{extra}\r\n".encode()


async def closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> bool:
    """Whether the edge closes the connection within `timeout` (reading what comes)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, OSError):
        return True
    return True


async def test_pipelined_requests_are_answered_in_order(edge: Edge) -> None:
    reader, writer = await open_raw(edge.url)
    # misses, a hit and a HEAD, all in one write
    writer.write(get("/pipe/1") + get("/pipe/2") + get("/pipe/1") + get("/pipe/2", method="HEAD"))
    answers = [await read_response(reader) for _ in range(3)]
    assert [body for _, _, body in answers] == [b"ok /pipe/1\n", b"ok /pipe/2\n", b"ok /pipe/1\n"]
    assert "hit" in answers[2][1]["cache-status"]
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # HEAD: no body
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 11\r\n" in head
    writer.write(get("/pipe/3"))
    assert (await read_response(reader))[2] == b"ok /pipe/3\n"
    writer.close()


async def test_expect_100_continue_is_answered_when_the_body_is_wanted(edge: Edge) -> None:
    reader, writer = await open_raw(edge.url)
    writer.write(
        b"POST /upload/expect HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
        b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    status, _, body = await read_response(reader)
    assert status.startswith("HTTP/1.1 200") and body == b"received 5\n"
    assert edge.origin.uploads["/upload/expect"] == 5
    writer.close()


async def test_a_large_chunked_upload_streams_through_with_flat_memory(edge: Edge) -> None:
    size = 64 * 1024**2
    before = edge.rss
    peak = before
    reader, writer = await open_raw(edge.url)
    writer.write(
        b"PUT /upload/big HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    block = b"u" * (256 * 1024)
    for _ in range(size // len(block)):
        writer.write(b"%x\r\n" % len(block) + block + b"\r\n")
        await writer.drain()
        peak = max(peak, edge.rss)
    writer.write(b"0\r\n\r\n")
    status, _, body = await read_response(reader, timeout=60)
    assert status.startswith("HTTP/1.1 200"), (status, body)
    assert edge.origin.uploads["/upload/big"] == size
    assert peak - before < FLAT, (before, peak)
    writer.close()


async def test_a_client_that_stops_reading_holds_no_memory_and_others_get_the_body(
    edge: Edge,
) -> None:
    size = 24 * 1024**2  # under the store's per-object share of a 256 MiB cache
    path = f"/big/{size}"
    before = edge.rss
    stalled_reader, stalled = await open_raw(edge.url)
    stalled.write(get(path))
    head = await asyncio.wait_for(stalled_reader.readuntil(b"\r\n\r\n"), 15)
    assert head.startswith(b"HTTP/1.1 200")
    # the stalled client reads nothing more; another gets the whole object
    reader, writer = await open_raw(edge.url)
    writer.write(get(path))
    status, _, body = await read_response(reader, timeout=60)
    assert status.startswith("HTTP/1.1 200")
    assert body == pattern(size)
    assert edge.origin.gets[path] == 1
    assert edge.rss - before < FLAT, (before, edge.rss)
    writer.close()
    # the stalled client is cut once it has left its answer unread for send_timeout

    async def none_open() -> bool:
        return await node_metric(edge.admin, "edgeshield_connections_open") == 0

    await eventually(none_open, "the stalled connection cut", timeout=30)
    received = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(stalled_reader.read(1024 * 1024), 10):
            received += len(chunk)
    assert received < size
    stalled.close()


async def test_too_many_header_fields_get_a_short_400_and_a_close(edge: Edge) -> None:
    reader, writer = await open_raw(edge.url)
    fields = [f"X-F{i}: {i}" for i in range(MAX_FIELDS + 5)]
    writer.write(get("/limits/fields", *fields))
    status, headers, body = await read_response(reader)
    assert status.startswith("HTTP/1.1 400") and headers["connection"] == "close"
    assert len(body) < 100
    assert await closed(reader)


async def test_a_head_over_max_head_size_gets_a_short_400_and_a_close(edge: Edge) -> None:
    reader, writer = await open_raw(edge.url)
    writer.write(get("/limits/size", *[f"X-Big{i}: {'v' * 1000}" for i in range(6)]))
    status, _, body = await read_response(reader)
    assert status.startswith("HTTP/1.1 400") and b"vvv" not in body and len(body) < 100
    assert await closed(reader)


async def test_an_upload_that_stops_gets_408_and_a_close(edge: Edge) -> None:
    reader, writer = await open_raw(edge.url)
    writer.write(
        b"POST /upload/stalled HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
        b"Content-Length: 100\r\n\r\n" + b"x" * 10
    )
    await eventually(lambda: edge.origin.receiving.get("/upload/stalled") == 10, "10 bytes up")
    data = await asyncio.wait_for(reader.read(), BODY_TIMEOUT * 8)
    # the origin's answer cannot come: the edge cuts its upstream request and the client
    # learns it with a 408 or a close, never a 200 for half a body
    assert data == b"" or data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.1 5")
    assert "/upload/stalled" not in edge.origin.uploads


async def test_a_framing_error_after_a_good_request_is_answered_after_it(edge: Edge) -> None:
    reader, writer = await open_raw(edge.url)
    writer.write(get("/frame/1") + b"G\x01T / HTTP/1.1\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status.startswith("HTTP/1.1 200") and body == b"ok /frame/1\n"
    status, _, body = await read_response(reader)
    assert status.startswith("HTTP/1.1 400") and b"\x01" not in body
    assert await closed(reader)


async def test_http_1_0_is_answered_in_kind_and_closed_unless_kept_alive(edge: Edge) -> None:
    reader, writer = await open_raw(edge.url)
    writer.write(get("/ten/1", version="1.0"))
    status, _, body = await read_response(reader)
    assert status.startswith("HTTP/1.0 200") and body == b"ok /ten/1\n"
    assert await closed(reader)
    reader, writer = await open_raw(edge.url)
    for _ in range(2):  # a miss, then a hit from the prepared head
        writer.write(get("/ten/2", "Connection: keep-alive", version="1.0"))
        status, headers, body = await read_response(reader)
        assert status.startswith("HTTP/1.0 200") and headers["connection"] == "keep-alive"
    assert "hit" in headers["cache-status"]
    writer.write(get("/ten/2", "Connection: close"))
    status, headers, _ = await read_response(reader)
    assert status.startswith("HTTP/1.1 200") and headers["connection"] == "close"
    assert await closed(reader)


async def test_a_pipelined_upload_between_gets_keeps_every_answer_in_step(edge: Edge) -> None:
    reader, writer = await open_raw(edge.url)
    upload = (
        b"POST /upload/between HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    writer.write(get("/step/1") + upload + get("/step/2") + get("/step/1"))
    answers = [(await read_response(reader))[2] for _ in range(4)]
    assert answers == [b"ok /step/1\n", b"received 11\n", b"ok /step/2\n", b"ok /step/1\n"]
    assert edge.origin.uploads["/upload/between"] == 11
    writer.close()
