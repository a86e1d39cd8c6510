"""Disk hits through the hit lane: a plain GET for a small fresh object that is on
disk but not in the memory tier is answered by the HTTP/1.1 front's hit lane (the
store's `get_now`, the key computed without a route), and everything the lane does
not decide still takes the engine's full path: purges, Vary, preconditions, Range,
HEAD, staleness. The route table does not grow by one-off URLs."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sqlite3
from pathlib import Path

from multidict import CIMultiDict

from edge.accesslog import AccessLog
from edge.front.types import RequestHead
from edge.hotlane import HOST_FIELDS, ROUTE_SIGHTINGS
from edge.store import NOT_NOW, DiskStore, StoredEntry
from edge.store.disk_inline import INLINE_BODY_MAX
from edge.store.disk_layout import ROW_MAGIC, decode_row
from tests.support.disk_lane import running_disk_edge
from tests.support.row_bodies import index_db
from tests.support.waiting import eventually

KiB = 1024
FRESH = "max-age=600"


async def test_a_disk_hit_is_answered_by_the_hit_lane(tmp_path: Path) -> None:
    async with running_disk_edge(tmp_path) as edge:
        body = os.urandom(KiB)
        edge.origin.responds("/a", cache_control=FRESH, body=body, ETag='"v1"')
        first = await edge.get("/a")
        assert first.status == 200 and first.body == body
        edge.evict("/a")
        edge.engine.hot.forget_routes()
        edge.clock.advance(7)
        hits = edge.engine.metrics.hits.value
        hit = await edge.get("/a")
        assert hit.status == 200 and hit.body == body
        assert hit.headers["Cache-Status"] == "edge1; hit; ttl=593"
        assert hit.headers["Age"] == "7" and hit.headers["ETag"] == '"v1"'
        assert int(hit.headers["Content-Length"]) == len(body)
        assert edge.engine.hot.disk_hits == 1
        assert edge.engine.metrics.hits.value == hits + 1
        assert edge.engine.metrics.disk_hits.value == 1
        assert edge.origin.count("/a") == 1
        # its second read from disk is answered the same way, its third is held in
        # the memory tier, and a hit on it after that is not a disk hit
        for _ in range(2):
            assert (await edge.get("/a")).status == 200
        assert edge.engine.metrics.disk_hits.value == 3
        assert edge.store.memory.get(edge.key("/a")) is not None
        assert (await edge.get("/a")).status == 200
        assert edge.engine.metrics.disk_hits.value == 3


async def test_a_disk_hit_without_a_route_leaves_none_behind(tmp_path: Path) -> None:
    async with running_disk_edge(tmp_path) as edge:
        for n in range(20):
            edge.origin.responds(f"/one-off/{n}", cache_control=FRESH, body=b"x" * n)
            assert (await edge.get(f"/one-off/{n}")).status == 200
        # one request each: misses then disk hits leave no route
        for n in range(20):
            edge.evict(f"/one-off/{n}")
            assert (await edge.get(f"/one-off/{n}?")).status == 200
        assert edge.engine.hot.disk_hits == 20
        assert not edge.engine.hot._routes
        # a pair asked for twice while its object is in memory gets its route (read
        # twice more from disk, the object is held from its third read)
        for _ in range(4):
            await edge.get("/one-off/3")
        assert (edge.engine.hot._routes.keys()) == {("www.example.com", "/one-off/3")}


async def test_the_route_table_keeps_the_hot_set_under_one_off_urls(tmp_path: Path) -> None:
    async with running_disk_edge(tmp_path) as edge:
        hot = edge.engine.hot
        hot.remember("h", "/hot", "key-hot")
        hot.remember("h", "/hot", "key-hot")
        for n in range(ROUTE_SIGHTINGS + 10):
            hot.remember("h", f"/once/{n}", f"key-{n}")
        assert hot._routes.keys() == {("h", "/hot")}


async def test_a_purged_object_on_disk_is_not_served_by_the_lane(tmp_path: Path) -> None:
    async with running_disk_edge(tmp_path) as edge:
        edge.origin.responds("/p", cache_control=FRESH, body=b"old")
        assert (await edge.get("/p")).body == b"old"
        await edge.get("/p")  # its route is remembered on its second sighting
        edge.evict("/p")
        edge.clock.advance(1)
        edge.purge("http://www.example.com/p")
        edge.clock.advance(1)
        edge.origin.responds("/p", cache_control=FRESH, body=b"new")
        reply = await edge.get("/p")
        assert reply.body == b"new" and "hit" not in reply.headers["Cache-Status"]
        assert edge.origin.count("/p") == 2
        assert edge.engine.hot.disk_hits == 0


async def test_a_vary_object_on_disk_takes_the_full_path(tmp_path: Path) -> None:
    async with running_disk_edge(tmp_path) as edge:
        edge.origin.responds("/v", cache_control=FRESH, body=b"en", Vary="Accept-Language")
        assert (await edge.get("/v", Accept_Language="en")).body == b"en"
        edge.evict("/v")
        index = edge.store.get_now(edge.key("/v"))
        assert index is not None and index is not NOT_NOW  # the Vary index, from disk
        edge.store.memory.discard(edge.key("/v"))
        reply = await edge.get("/v", Accept_Language="en")
        assert reply.body == b"en" and "hit" in reply.headers["Cache-Status"]
        assert edge.engine.hot.disk_hits == 0
        assert edge.origin.count("/v") == 1


async def test_what_the_lane_does_not_decide_is_answered_in_full_from_disk(
    tmp_path: Path,
) -> None:
    async with running_disk_edge(tmp_path) as edge:
        body = bytes(range(256)) * 4
        edge.origin.responds("/f", cache_control=FRESH, body=body, ETag='"e"')
        await edge.get("/f")
        edge.evict("/f")
        not_modified = await edge.get("/f", If_None_Match='"e"')
        assert not_modified.status == 304
        edge.evict("/f")
        part = await edge.get("/f", Range="bytes=10-19")
        assert part.status == 206 and part.body == body[10:20]
        edge.evict("/f")
        head = await edge.request("HEAD", "/f")
        assert head.status == 200 and head.body == b""
        assert head.headers["Content-Length"] == str(len(body))
        assert edge.engine.hot.disk_hits == 0
        # each read from disk by the full path, and counted as a disk hit there
        assert edge.engine.metrics.disk_hits.value == 3
        # stale: revalidated, never answered by the lane
        edge.evict("/f")
        edge.clock.advance(601)
        stale = await edge.get("/f")
        assert stale.status == 200 and stale.body == body
        assert edge.engine.hot.disk_hits == 0
        assert edge.engine.metrics.disk_hits.value == 3  # a revalidation is not a hit
        assert edge.origin.count("/f") == 2


async def test_get_now_answers_what_it_can_without_waiting(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), 1 << 30)
    try:
        for key, size in (("small", KiB), ("large", INLINE_BODY_MAX + 1)):
            writer = store.begin(key)
            await writer.write(os.urandom(size))
            await writer.commit({"meta": key})
            store.memory.discard(key)
        small = store.get_now("small")
        assert isinstance(small, StoredEntry)
        assert small.bodies["identity"].size == KiB
        assert store.get_now("large") is NOT_NOW
        assert store.get_now("absent") is None
        large = await store.get("large")
        assert large is not None and large.bodies["identity"].size == INLINE_BODY_MAX + 1
    finally:
        await store.close()


async def test_a_large_object_on_disk_is_looked_up_once(tmp_path: Path) -> None:
    async with running_disk_edge(tmp_path) as edge:
        body = os.urandom(INLINE_BODY_MAX + KiB)
        edge.origin.responds("/big", cache_control=FRESH, body=body)
        assert (await edge.get("/big")).body == body
        edge.evict("/big")
        lookups, gateway = edge.store._inline.lookups, edge.store.gateway_loads
        reply = await edge.get("/big")
        assert reply.body == body and "hit" in reply.headers["Cache-Status"]
        # the hit lane's `get_now` read the row; the engine's `get` took it from there
        assert edge.store._inline.lookups == lookups + 1
        assert edge.store.gateway_loads == gateway + 1
        assert edge.engine.hot.disk_hits == 0


async def test_a_row_the_lane_read_and_declined_is_not_read_again(tmp_path: Path) -> None:
    async with running_disk_edge(tmp_path, memory_bytes=0) as edge:  # a tier holding nothing
        edge.origin.responds("/vv", cache_control=FRESH, body=b"en", Vary="Accept-Language")
        assert (await edge.get("/vv", Accept_Language="en")).body == b"en"
        lookups = edge.store._inline.lookups
        reply = await edge.get("/vv", Accept_Language="en")
        assert reply.body == b"en" and "hit" in reply.headers["Cache-Status"]
        # the Vary index read once (by the lane, declined: the engine took it from
        # there), then the variant
        assert edge.store._inline.lookups == lookups + 2
        assert edge.engine.hot.disk_hits == 0


async def test_a_disk_hit_through_the_lane_is_logged_as_a_hit(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = AccessLog(stream, "edge1")
    async with running_disk_edge(tmp_path, access_log=log) as edge:
        edge.origin.responds("/logged", cache_control=FRESH, body=b"z" * 100)
        await edge.get("/logged")
        edge.evict("/logged")
        log.flush()
        stream.truncate(0)
        stream.seek(0)
        await edge.request("GET", "/logged", User_Agent="probe/1")
        log.flush()
        assert edge.engine.hot.disk_hits == 1
    (line,) = stream.getvalue().splitlines()
    fields = json.loads(line)
    assert fields["cache"] == "hit; ttl=600" and fields["status"] == 200
    assert fields["bytes"] == 100 and fields["target"] == "/logged"
    assert fields["ua"] == "probe/1" and fields["proto"] == "http/1.1"


async def test_a_filled_object_is_stored_as_a_plain_row(tmp_path: Path) -> None:
    """What a real fill stores (fields as the miss path builds them, repeated ones
    included) is a marshalled row, not the pickled fallback a disk hit decodes twice
    as slowly: a type the row cannot hold would fall back without a word."""
    async with running_disk_edge(tmp_path) as edge:
        edge.origin.responds(
            "/plain", cache_control=FRESH, body=b"p" * 100, ETag='"p1"', Surrogate_Key="a b"
        )
        assert (await edge.get("/plain")).status == 200
        db = index_db(tmp_path / "cache")

        def row() -> bytes | None:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                found = conn.execute(
                    "SELECT value FROM Cache WHERE key = ?", (edge.key("/plain"),)
                ).fetchone()
            return None if found is None else bytes(found[0])

        await eventually(lambda: row() is not None, "the fill's row")
        value = row()
        assert value is not None and value.startswith(ROW_MAGIC)
        record = decode_row(value)
        assert record is not None and record.meta.etag == '"p1"'


async def test_every_spelling_of_a_host_reaches_its_objects_on_disk(tmp_path: Path) -> None:
    """The lane computes a key's start once per Host field (its service and host),
    as the full path does per request: case, port 80 and a trailing dot are one host."""
    async with running_disk_edge(tmp_path) as edge:
        edge.origin.responds("/a", cache_control=FRESH, body=b"stored once")
        assert (await edge.get("/a")).status == 200
        for spelling in ("WWW.Example.COM", "www.example.com:80", "www.example.com."):
            edge.evict("/a")
            hit = await edge.get("/a", Host=spelling)
            assert hit.status == 200 and hit.body == b"stored once", spelling
        assert edge.engine.hot.disk_hits == 3
        assert edge.origin.count("/a") == 1


async def test_a_host_no_longer_served_is_not_answered_from_disk(tmp_path: Path) -> None:
    async with running_disk_edge(tmp_path) as edge:
        edge.origin.responds("/a", cache_control=FRESH, body=b"x")
        assert (await edge.get("/a")).status == 200
        edge.evict("/a")
        assert (await edge.get("/a")).status == 200  # the lane knows the host now
        engine = edge.engine
        (service,) = set(engine._hosts.values())
        engine.reconfigure((dataclasses.replace(service, hosts=("other.example",)),))
        edge.evict("/a")
        refused = await edge.get("/a")
        assert 400 <= refused.status < 500
        assert engine.hot.disk_hits == 1


async def test_the_hosts_the_lane_remembers_are_bounded(tmp_path: Path) -> None:
    """A client sending a new Host field with every request does not grow the lane."""
    async with running_disk_edge(tmp_path) as edge:
        for n in range(HOST_FIELDS + 50):
            request = RequestHead("GET", "/a", CIMultiDict(Host=f"h{n}.example"), None)
            assert edge.engine.hot._key_start(request, f"h{n}.example") is False  # not served
        assert len(edge.engine.hot._key_starts) <= HOST_FIELDS
