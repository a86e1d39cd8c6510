"""Disk hits over HTTP/2: a GET for a small fresh object that is on disk but not in
the memory tier is answered by the HTTP/2 front's hit lane, as the HTTP/1.1 front
answers it (tests/edge/test_disk_lane.py), on both of its ways in (the inbound
lane, and a stream the h2 library opened); a purged or stale object still takes the
engine's full path, and nothing read for one answer is kept beyond the memory tier.

A real engine on a real disk store (tests/support/disk_lane.py), our HTTP/2 front on
127.0.0.1 in cleartext, and h2 itself as the client."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h2.settings
import pytest

from edge.front.h2_protocol import H2Protocol
from edge.metrics import NodeMetrics
from tests.support.disk_lane import HOST, DiskEdge, running_disk_edge
from tests.support.tls_fleet import H2Client

pytestmark = pytest.mark.timeout(60)

KiB = 1024
FRESH = "max-age=600"


@asynccontextmanager
async def h2_disk_edge(
    root: Path, memory_bytes: int = 64 * 1024 * 1024
) -> AsyncIterator[tuple[DiskEdge, H2Client]]:
    """An engine on a disk store, our HTTP/2 front for it, and one client connected."""
    async with running_disk_edge(root, memory_bytes=memory_bytes) as edge:
        metrics = NodeMetrics("edge1", "edge")
        server = await asyncio.get_running_loop().create_server(
            lambda: H2Protocol(edge.engine, metrics=metrics, scheme="https"), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = H2Client(reader, writer)
        try:
            yield edge, client
        finally:
            client.close()
            server.close()
            await server.wait_closed()


async def test_a_disk_hit_over_h2_is_answered_by_the_hit_lane(tmp_path: Path) -> None:
    async with h2_disk_edge(tmp_path) as (edge, client):
        body = os.urandom(KiB)
        edge.origin.responds("/a", cache_control=FRESH, body=body, ETag='"v1"')
        first = await client.get(HOST, "/a")
        assert first.status == 200 and first.body == body
        edge.evict("/a")
        edge.engine.hot.forget_routes()
        edge.clock.advance(7)
        hits = edge.engine.metrics.hits.value
        hit = await client.get(HOST, "/a")
        assert hit.status == 200 and hit.body == body
        assert hit.headers["cache-status"] == "edge1; hit; ttl=593; proto=h2"
        assert hit.headers["age"] == "7" and hit.headers["etag"] == '"v1"'
        assert hit.headers["content-length"] == str(len(body))
        assert edge.engine.hot.disk_hits == 1
        assert edge.engine.metrics.hits.value == hits + 1
        assert edge.origin.count("/a") == 1


async def test_what_a_disk_hit_read_is_not_kept_beyond_the_memory_tier(tmp_path: Path) -> None:
    # a tier that holds nothing: every hit is read from disk, and answered by the lane
    async with h2_disk_edge(tmp_path, memory_bytes=1) as (edge, client):
        edge.origin.responds("/t", cache_control=FRESH, body=b"tiny")
        assert (await client.get(HOST, "/t")).body == b"tiny"
        for _ in range(3):
            hit = await client.get(HOST, "/t")
            assert hit.body == b"tiny" and "hit" in hit.headers["cache-status"]
        assert edge.engine.hot.disk_hits == 3
        assert len(edge.store.memory) == 0
        assert not edge.engine.hot._prepared


async def test_a_disk_hit_waiting_for_the_clients_window_is_answered_whole(
    tmp_path: Path,
) -> None:
    async with h2_disk_edge(tmp_path) as (edge, client):
        body = bytes(range(256)) * 16  # 4 KiB
        edge.origin.responds("/w", cache_control=FRESH, body=body)
        await client.get(HOST, "/w")
        edge.evict("/w")
        # a window smaller than the body: the inbound lane hands the stream to h2,
        # and the answer it found goes out as the window opens
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        client.writer.write(client.conn.data_to_send())
        hit = await client.get(HOST, "/w")
        assert hit.body == body and "hit" in hit.headers["cache-status"]
        assert edge.engine.hot.disk_hits == 1
        assert edge.origin.count("/w") == 1


async def test_a_purged_object_on_disk_is_not_served_by_the_h2_lane(tmp_path: Path) -> None:
    async with h2_disk_edge(tmp_path) as (edge, client):
        edge.origin.responds("/p", cache_control=FRESH, body=b"old")
        assert (await client.get(HOST, "/p")).body == b"old"
        edge.evict("/p")
        edge.clock.advance(1)
        edge.purge("http://www.example.com/p")
        edge.clock.advance(1)
        edge.origin.responds("/p", cache_control=FRESH, body=b"new")
        reply = await client.get(HOST, "/p")
        assert reply.body == b"new" and "hit" not in reply.headers["cache-status"]
        assert edge.origin.count("/p") == 2
        assert edge.engine.hot.disk_hits == 0


async def test_a_stale_object_on_disk_takes_the_full_path_over_h2(tmp_path: Path) -> None:
    async with h2_disk_edge(tmp_path) as (edge, client):
        edge.origin.responds("/s", cache_control="max-age=5", body=b"v1")
        assert (await client.get(HOST, "/s")).body == b"v1"
        edge.evict("/s")
        edge.clock.advance(10)
        edge.origin.responds("/s", cache_control="max-age=5", body=b"v2")
        reply = await client.get(HOST, "/s")
        assert reply.body == b"v2"
        assert edge.engine.hot.disk_hits == 0
        assert edge.origin.count("/s") == 2
