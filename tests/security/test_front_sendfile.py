"""Stored bodies sent with `os.sendfile` by the httptools front, over raw sockets
against a real edge process.

The edge keeps no body in memory here (`memory_size` is tiny), so every hit above the
size the store loads whole (256 KiB) is read from its file. A body goes out by
sendfile once this process has read it whole and found it matching its checksum
(`edgeshield_sendfile_answers_total` counts those answers), and ranges of it at
once; what arrives is byte-exact, whole or ranged, on HTTP/1.1 and 1.0, and HEAD gets
no body. A body damaged on disk is never sent
whole: the first whole send is the checked read, which cuts the connection. A client
that stops reading mid-sendfile holds no memory of the edge's and is cut after
`send_timeout`. Over TLS, which must encrypt every byte, the same body is copied
through the checked reader instead, never sent by sendfile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

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
from tests.support.tls_fleet import TlsFiles, split, tls_fleet_toml
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

SEND_TIMEOUT = 3.0
MiB = 1024**2
#: resident memory the edge may gain while a stalled client holds a large answer open
FLAT = 40 * MiB
SENT = "edgeshield_sendfile_answers_total"
CORRUPT = "edgeshield_store_corrupt_total"


class Edge:
    """The running edge (one worker: the set of checked files is per process)."""

    def __init__(self, url: str, admin: str, cache_dir: str, node: NodeProcess) -> None:
        self.url = url
        self.admin = admin
        self.cache_dir = cache_dir
        self.node = node

    @property
    def rss(self) -> int:
        assert self.node.proc is not None
        return rss_bytes(self.node.proc.pid)

    async def metric(self, name: str) -> float:
        return await node_metric(self.admin, name)

    def body_file(self, size: int) -> Path:
        """The one stored body file of `size` bytes."""
        root = Path(self.cache_dir) / "objects" / "bodies"
        found = [
            Path(dirpath) / name
            for dirpath, _dirs, files in os.walk(root)
            for name in files
            if (Path(dirpath) / name).stat().st_size == size
        ]
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    origin = BulkOrigin().start()
    # no memory tier to speak of, no scrubber (the serving path's checks are what is
    # seen); one worker (the fleet file's default here)
    keys = f'send_timeout = {SEND_TIMEOUT}\nmemory_size = "4KiB"\nscrub_rate = 0\n'
    try:
        with running_edge(tmp_path_factory.mktemp("sendfile"), origin.url, "httptools", keys) as (
            fleet,
            node,
        ):
            config = fleet.edges[0]
            yield Edge(config.url, config.admin_url, config.cache_dir, node)
    finally:
        origin.close()


def get(path: str, *fields: str, method: str = "GET", version: str = "1.1") -> bytes:
    extra = "".join(f"{field}\r\n" for field in fields)
    return f"{method} {path} HTTP/{version}\r\nHost: {HOST}\r\n{extra}\r\n".encode()


async def fetch(edge: Edge, path: str, *fields: str) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await open_raw(edge.url)
    try:
        writer.write(get(path, *fields))
        return await read_response(reader, timeout=30)
    finally:
        writer.close()


async def checked(edge: Edge, path: str, size: int) -> None:
    """Fill `path` and read it whole once from its file (the checked read), so that
    later answers go by sendfile."""
    for _ in range(2):  # the miss, then the first hit from the file
        status, headers, body = await fetch(edge, path)
        assert status.startswith("HTTP/1.1 200") and body == pattern(size), status
    assert "hit" in headers["cache-status"]


async def cut_short(reader: asyncio.StreamReader, size: int) -> int:
    """Read an answer's body until the edge closes; the bytes that came (< size when
    the answer was cut)."""
    received = 0
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(30):
            while chunk := await reader.read(MiB):
                received += len(chunk)
    assert received <= size
    return received


async def test_a_checked_body_is_sent_whole_by_sendfile_byte_exact(edge: Edge) -> None:
    # 300 KiB: just above the size the store reads whole into memory on every load
    for size in (MiB, 300 * 1024):
        path = f"/big/{size}/whole"
        await checked(edge, path, size)
        before = await edge.metric(SENT)
        # several on one connection: each answer's bytes keep their place
        reader, writer = await open_raw(edge.url)
        writer.write(get(path) * 3)
        for _ in range(3):
            status, headers, body = await read_response(reader, timeout=30)
            assert status.startswith("HTTP/1.1 200") and headers["content-length"] == str(size)
            assert body == pattern(size)
        writer.close()
        assert await edge.metric(SENT) == before + 3


async def test_ranges_are_sent_by_sendfile_byte_exact(edge: Edge) -> None:
    size = 3 * MiB
    path = f"/big/{size}/ranges"
    *_, body = await fetch(edge, path)  # the miss; no whole read from the file yet
    assert body == pattern(size)
    whole = pattern(size)
    before = await edge.metric(SENT)
    reader, writer = await open_raw(edge.url)
    ranges = ((0, 0), (1000, 200_999), (MiB - 1, 2 * MiB + 5), (size - 10, size - 1))
    writer.write(b"".join(get(path, f"Range: bytes={first}-{last}") for first, last in ranges))
    for first, last in ranges:
        status, headers, body = await read_response(reader, timeout=30)
        assert status.startswith("HTTP/1.1 206"), status
        assert headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert body == whole[first : last + 1]
    # a suffix range
    writer.write(get(path, "Range: bytes=-4096"))
    status, headers, body = await read_response(reader, timeout=30)
    assert status.startswith("HTTP/1.1 206") and body == whole[-4096:]
    writer.close()
    assert await edge.metric(SENT) == before + len(ranges) + 1


async def test_a_body_damaged_on_disk_is_never_sent_whole(edge: Edge) -> None:
    size = 2 * MiB
    path = f"/big/{size}/damaged"
    *_, body = await fetch(edge, path)  # stored, never read whole from its file
    assert body == pattern(size)
    with open(edge.body_file(size), "r+b") as stored:
        stored.seek(size // 2)
        stored.write(b"\xff" * 10)
    corrupt = await edge.metric(CORRUPT)
    sent = await edge.metric(SENT)
    reader, writer = await open_raw(edge.url)
    writer.write(get(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 200") and b"hit" in head
    assert await cut_short(reader, size) < size, "a damaged body was sent whole"
    writer.close()
    assert await edge.metric(CORRUPT) == corrupt + 1
    assert await edge.metric(SENT) == sent
    # dropped: the next request fetches it again, whole
    _, headers, body = await fetch(edge, path)
    assert body == pattern(size) and "hit" not in headers["cache-status"].rsplit(",", 1)[-1]


async def test_a_body_changed_after_its_check_is_checked_again(edge: Edge) -> None:
    size = 2 * MiB + 1  # a size of its own, to find its file by
    path = f"/big/{size}/changed"
    await checked(edge, path, size)
    sent = await edge.metric(SENT)
    *_, body = await fetch(edge, path)
    assert body == pattern(size) and await edge.metric(SENT) == sent + 1
    # written to after it was checked (a new mtime): no longer the file that was checked
    with open(edge.body_file(size), "r+b") as stored:
        stored.seek(12345)
        stored.write(b"\x00" * 10)
    corrupt = await edge.metric(CORRUPT)
    reader, writer = await open_raw(edge.url)
    writer.write(get(path))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert await cut_short(reader, size) < size, "a changed body was sent whole"
    writer.close()
    assert await edge.metric(CORRUPT) == corrupt + 1
    assert await edge.metric(SENT) == sent + 1


async def test_http_1_0_and_head_by_sendfile(edge: Edge) -> None:
    size = MiB
    path = f"/big/{size}/old"
    await checked(edge, path, size)
    sent = await edge.metric(SENT)
    # HTTP/1.0 without keep-alive: the whole body, then the close
    reader, writer = await open_raw(edge.url)
    writer.write(get(path, version="1.0"))
    status, headers, body = await read_response(reader, timeout=30)
    assert status.startswith("HTTP/1.0 200") and body == pattern(size)
    assert headers["connection"] == "close"
    assert await reader.read() == b""
    writer.close()
    # HTTP/1.0 kept alive, then HEAD (no body), then a GET on the same connection
    reader, writer = await open_raw(edge.url)
    writer.write(get(path, "Connection: keep-alive", version="1.0"))
    status, headers, body = await read_response(reader, timeout=30)
    assert status.startswith("HTTP/1.0 200") and body == pattern(size)
    assert headers["connection"] == "keep-alive"
    writer.write(get(path, "Connection: keep-alive", method="HEAD", version="1.0") + get(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.0 200") and b"Content-Length: %d\r\n" % size in head
    status, _, body = await read_response(reader, timeout=30)
    assert status.startswith("HTTP/1.1 200") and body == pattern(size)
    writer.close()
    assert await edge.metric(SENT) == sent + 3


async def test_a_client_that_stops_reading_mid_sendfile_holds_no_memory_and_is_cut(
    edge: Edge,
) -> None:
    size = 24 * MiB
    path = f"/big/{size}/stalled"
    await checked(edge, path, size)
    sent = await edge.metric(SENT)
    before = edge.rss
    stalled_reader, stalled = await open_raw(edge.url)
    stalled.write(get(path))
    head = await asyncio.wait_for(stalled_reader.readuntil(b"\r\n\r\n"), 15)
    assert head.startswith(b"HTTP/1.1 200")
    # the stalled client reads nothing more; others get the whole body meanwhile
    for _ in range(3):
        *_, body = await fetch(edge, path)
        assert body == pattern(size)
    assert await edge.metric(SENT) == sent + 4
    assert edge.rss - before < FLAT, (before, edge.rss)

    async def none_open() -> bool:
        return await edge.metric("edgeshield_connections_open") == 0

    await eventually(none_open, "the stalled connection cut", timeout=SEND_TIMEOUT + 20)
    assert await cut_short(stalled_reader, size) < size
    stalled.close()


class TlsEdge:
    """An edge with a TLS listener beside its plain one (service beta: no redirect)."""

    def __init__(self, root: Path, origin: str) -> None:
        self.files = TlsFiles(root / "tls")
        text, self.addresses = tls_fleet_toml(root, self.files, origin)
        # one worker: the files a worker has checked are its own
        text = text.replace('name = "edge1"\n', 'name = "edge1"\nworkers = 1\n')
        assert "workers = 1" in text
        (root / "fleet.toml").write_text(text)
        self.process = NodeProcess(
            ["edge", "--config", str(root / "fleet.toml"), "--node", "edge1"],
            root / "edge.log",
            env={"EDGESHIELD_ACCESS_LOG": "0", "EDGESHIELD_FRONT": "httptools"},
        )

    async def metric(self, name: str) -> float:
        return await node_metric(f"http://{self.addresses['edge_admin']}", name)


@pytest.fixture(scope="module")
def tls_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEdge]:
    origin = BulkOrigin().start()
    node = TlsEdge(tmp_path_factory.mktemp("sendfile-tls"), origin.url)
    try:
        node.process.start()
        for key in ("edge", "edge_tls", "edge_admin"):
            node.process.wait_listening(node.addresses[key])
        yield node
    finally:
        node.process.stop()
        origin.close()


async def test_tls_answers_copy_the_body_never_sendfile(tls_edge: TlsEdge) -> None:
    size = MiB
    path = f"/big/{size}/tls"
    host, port = split(tls_edge.addresses["edge_tls"])
    context = tls_edge.files.client_context()
    request = f"GET {path} HTTP/1.1\r\nHost: www.beta.test\r\n\r\n".encode()
    for _ in range(4):  # the miss, the checked read, then two that plain TCP would sendfile
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname="www.beta.test", limit=MiB
        )
        writer.write(request)
        status, _, body = await read_response(reader, timeout=30)
        assert status.startswith("HTTP/1.1 200") and body == pattern(size)
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    assert await tls_edge.metric(SENT) == 0
    # the same object on the plain listener goes by sendfile (it was checked above)
    host, port = split(tls_edge.addresses["edge"])
    reader, writer = await asyncio.open_connection(host, port, limit=MiB)
    writer.write(request)
    status, _, body = await read_response(reader, timeout=30)
    assert status.startswith("HTTP/1.1 200") and body == pattern(size)
    writer.close()
    assert await tls_edge.metric(SENT) == 1
