"""Ready answers (edge/store/ready.py): a small object's HTTP/1.1 answer stored whole
when it is filled, and a disk hit written from one `pread` of it, without the index.

The record format and the ring are attacked directly (a flipped byte, a torn or
overwritten record, another key or maker); the store's use of them through two
`DiskStore`s sharing one directory, as a node's worker processes do: a replace or
delete by one is seen by the other at once, with no sync; and the HTTP/1.1 front's
answer from one is the same answer as a hit from memory, decided the same way
(freshness, purges, Accept-Encoding, the memory tier's admission)."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from edge.cache.model import ObjectMeta
from edge.store import DiskStore, StoredEntry
from edge.store.base import READ_AGAIN, SECOND_CHANCES, SIZE_BITS
from edge.store.ready import (
    LENGTH_BITS,
    READY_RING_MIN,
    RING_START,
    ReadyHead,
    ReadyRing,
    encode_record,
    parse_record,
    parse_record_at,
    split_location,
)
from edge.store.ready_places import CHECK_BITS, CHECK_MASK, CHECK_SHIFT, LOCATION_MASK
from tests.support.ready_store import (
    FRESH,
    TAG,
    encoded,
    fill_tier,
    head,
    meta,
    put,
    ready_edge,
    synced,
    two_workers,
)

KiB = 1024


def test_a_record_reads_back_with_what_a_hit_decides_by() -> None:
    record = encoded("svc example.com/a", b"hello")
    found = parse_record(record, b"svc example.com/a", TAG)
    assert found is not None
    assert found.answer == b"Content-Length: 5\r\n\r\nhello" and found.body == b"hello"
    assert found.status == 200 and not found.has_date and found.status_prefix == "edge1; "
    assert found.age(1010.0) == 13.0 and found.freshness_lifetime == 600.0
    assert found.stored_at == 999.0
    assert found.purge_fields() == ("svc", "example.com", "/a", ("k1", "k2"))


def test_a_record_that_is_not_whole_and_alive_and_ours_is_refused() -> None:
    key = b"svc example.com/a"
    record = encoded(key.decode(), b"hello")
    assert parse_record(record, b"svc example.com/b", TAG) is None  # another key
    assert parse_record(record, key, TAG + 1) is None  # another node name or release
    assert parse_record(b"\x01" + record[1:], key, TAG) is None  # marked dead
    assert parse_record(record[:-1], key, TAG) is None  # torn
    assert parse_record(record + b"x", key, TAG) is None  # with another's bytes after it
    assert parse_record(record[:10], key, TAG) is None
    for position in range(1, len(record)):  # any byte but the mark, flipped
        damaged = bytearray(record)
        damaged[position] ^= 0x20
        assert parse_record(bytes(damaged), key, TAG) is None, position


def test_a_record_is_read_in_place_and_a_place_past_the_end_is_refused(
    tmp_path: Path,
) -> None:
    key = b"svc example.com/a"
    record = encoded(key.decode(), b"hello")
    path = tmp_path / "ring"
    path.write_bytes(b"x" * 100 + record)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
        found = parse_record_at(view, 100, len(record), key, TAG)
        assert found is not None and found.body == b"hello"
        assert found == parse_record(record, key, TAG)
        assert parse_record_at(view, 99, len(record), key, TAG) is None  # not its start
        assert parse_record_at(view, 100, len(record) - 1, key, TAG) is None  # not its length
        # a location beyond the mapping (a ring shortened, a damaged row): refused,
        # not read past the end
        assert parse_record_at(view, 101, len(record), key, TAG) is None
        assert parse_record_at(view, len(view) + 4096, len(record), key, TAG) is None


def test_the_ring_wraps_and_an_overwritten_record_is_refused(tmp_path: Path) -> None:
    ring = ReadyRing(str(tmp_path / "ready" / "answers"), READY_RING_MIN)
    try:
        body = os.urandom(64 * KiB)
        first = ring.append(encoded("k0", body))
        assert parse_record(ring.read(first), b"k0", TAG) is not None
        locations = [ring.append(encoded(f"k{n}", body)) for n in range(1, 400)]
        # the ring holds about 255 of these: it wrapped, and wrote over the first
        assert min(loc >> 20 for loc in locations) == RING_START
        assert parse_record(ring.read(first), b"k0", TAG) is None
        assert parse_record(ring.read(locations[-1]), b"k399", TAG) is not None
    finally:
        ring.close()


def test_a_batch_is_appended_in_runs_and_wraps_in_the_middle(tmp_path: Path) -> None:
    """A commit batch's records go in with one write per run between wraps; each is
    read back at its location, the ones after the wrap from the start."""
    ring = ReadyRing(str(tmp_path / "answers"), READY_RING_MIN)
    try:
        body = os.urandom(64 * KiB)
        ring.append_many([encoded(f"a{n}", body) for n in range(250)])  # nearly full
        batch = [encoded(f"b{n}", body) for n in range(10)]
        locations = ring.append_many(batch)
        offsets = [loc >> 20 for loc in locations]
        assert RING_START in offsets and offsets[0] != RING_START  # wrapped inside
        for n, loc in enumerate(locations):
            assert parse_record(ring.read(loc), f"b{n}".encode(), TAG) is not None
        after = ring.append(encoded("c", b"x"))
        assert after >> 20 == offsets[-1] + len(batch[-1])  # the position went on
        assert ring.append_many([b"x" * (ring.capacity + 1)]) == [0]  # longer than it
    finally:
        ring.close()


def mapped_bytes(path: Path) -> int:
    """Bytes of `path`'s mappings in this process that are in memory (smaps' Rss)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split(maxsplit=1)[0].endswith(":"):  # a mapping's first line
            inside = line.endswith(" " + str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_a_mapped_ring_maps_its_written_records_and_no_hole(tmp_path: Path) -> None:
    """Mapped for reads, the pages of the records written so far are in memory at
    once (no page fault on their first read), and the rest of the sparse ring is
    not: a read of a hole of a file in memory would give it a page."""
    path = tmp_path / "answers"
    ring = ReadyRing(str(path), READY_RING_MIN)
    try:
        written = ring.append_many([encoded(f"k{n}", os.urandom(64 * KiB)) for n in range(16)])
        end = (written[-1] >> 20) + (written[-1] & ((1 << 20) - 1))
        ring.map_for_reads()
        mapped = mapped_bytes(path)
        # where the filesystem says the written part ends (its first hole: on a
        # filesystem that keeps holes, the end of the last record's block)
        hole = os.lseek(ring.fd, RING_START, os.SEEK_HOLE)
        assert end <= hole
        assert hole - 4 * KiB <= mapped <= hole
    finally:
        ring.close()


def test_kill_marks_only_the_record_of_its_key(tmp_path: Path) -> None:
    ring = ReadyRing(str(tmp_path / "answers"), READY_RING_MIN)
    try:
        loc = ring.append(encoded("svc example.com/ab", b"x"))
        # another key, even one the first is a prefix of, is not marked
        assert not ring.kill(loc, "svc example.com/a")
        assert parse_record(ring.read(loc), b"svc example.com/ab", TAG) is not None
        assert ring.kill(loc, "svc example.com/ab")
        assert parse_record(ring.read(loc), b"svc example.com/ab", TAG) is None
        assert not ring.kill(loc, "svc example.com/ab")  # already dead
    finally:
        ring.close()


def test_fields_wider_than_a_record_holds_make_no_record() -> None:
    # a hostile origin's surrogate keys, or a key, past the fields' widths
    many_keys = meta(surrogate_keys=tuple(f"key-{n}" for n in range(20_000)))
    assert encode_record("k", head(), many_keys, {"identity": b"x"}) is None
    assert encode_record("k" * 70_000, head(), meta(), {"identity": b"x"}) is None
    assert encode_record("k", head(), meta(), {"identity": b"x" * (1 << 20)}) is None


async def test_an_object_too_wide_for_a_record_is_stored_without_one(tmp_path: Path) -> None:
    async with two_workers(tmp_path) as (first, _second):
        await put(first, "k", b"body", surrogate_keys=tuple(f"key-{n}" for n in range(20_000)))
        assert first.ready_answer("k", TAG) is None
        entry = first.get_now("k")
        assert isinstance(entry, StoredEntry) and entry.bodies["identity"].data == b"body"


async def test_a_store_finds_another_workers_object_by_its_ready_answer(tmp_path: Path) -> None:
    async with two_workers(tmp_path) as (first, second):
        await put(first, "k", b"hello")
        await synced(second, "k")
        lookups = second._inline.lookups
        found = second.ready_answer("k", TAG)
        assert found is not None and found.body == b"hello"
        assert second._inline.lookups == lookups  # no index lookup
        assert second.ready_answer("k", TAG + 1) is None  # another maker's tag


@pytest.mark.parametrize("in_memory", [False, True], ids=["pread", "mapped"])
async def test_a_replace_by_another_worker_is_seen_at_once(tmp_path: Path, in_memory: bool) -> None:
    """Also on a memory filesystem, where the ring is read from a shared mapping: what
    another worker writes, and the dead mark it sets, show through it at once."""
    async with two_workers(tmp_path, in_memory) as (first, second):
        assert second._disk.ring is not None
        assert (second._disk.ring.view is not None) == in_memory
        await put(first, "k", b"v1")
        await synced(second, "k")
        found = second.ready_answer("k", TAG)
        assert found is not None and found.body == b"v1"
        await put(first, "k", b"v2")
        # no sync: the old record is dead, so the index is read instead; the slot
        # that named it is cleared
        assert second._places is not None and second._places.find(hash("k"))[1] != 0
        assert second.ready_answer("k", TAG) is None
        assert second._places.find(hash("k")) == (-1, 0)
        entry = second.get_now("k")
        assert isinstance(entry, StoredEntry) and entry.bodies["identity"].data == b"v2"
        # the lookup taught it the new record's place
        second.memory.forget_sightings()
        found = second.ready_answer("k", TAG)
        assert found is not None and found.body == b"v2"
    assert first._disk.ring is None  # closed, its mapping with it


async def test_a_delete_or_refresh_by_another_worker_is_seen_at_once(tmp_path: Path) -> None:
    async with two_workers(tmp_path) as (first, second):
        for key in ("gone", "refreshed", "compressed"):
            await put(first, key, b"body")
            await synced(second, key)
            assert second.ready_answer(key, TAG) is not None
            second.memory.forget_sightings()
        await first.delete("gone")
        await first.put_meta("refreshed", meta(freshness_lifetime=9000.0))
        variant = first.tmp_path(".br")
        Path(variant).write_bytes(b"br-body")
        assert await first.add_encoding("compressed", "br", variant) is not None
        for key in ("gone", "refreshed", "compressed"):
            assert second.ready_answer(key, TAG) is None, key
        assert second.get_now("gone") is None


async def test_ready_answers_survive_a_restart(tmp_path: Path) -> None:
    async with two_workers(tmp_path) as (first, _second):
        await put(first, "k", b"kept")
    store = await DiskStore.open(str(tmp_path), 1 << 30, memory_bytes=0)
    try:
        found = store.ready_answer("k", TAG)
        assert found is not None and found.body == b"kept"
        assert store.places_found == 1  # its slot filled at open
        assert store.size_bytes == 4  # the byte total counts bodies, not locations
    finally:
        await store.close()


async def test_eviction_counts_bodies_and_kills_the_evicted_answers(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path), 10 * KiB, memory_bytes=0)
    store.ready_maker = lambda _meta, _codings, _settled: head()
    try:
        for n in range(20):
            await put(store, f"k{n}", os.urandom(KiB))
        assert store.size_bytes <= 10 * KiB
        assert store.ready_answer("k0", TAG) is None  # evicted
        assert store._disk.ring is not None and store._disk.ring.killed >= 10
        assert store.ready_answer("k19", TAG) is not None
    finally:
        await store.close()


async def test_an_object_read_by_its_ready_answer_gets_a_second_chance(tmp_path: Path) -> None:
    """A ready answer's read does not move its key in the recency list (it marks it):
    eviction then passes over it once, as over a key just read."""
    store = await DiskStore.open(str(tmp_path), 4 * KiB, memory_bytes=0)
    store.ready_maker = lambda _meta, _codings, _settled: head()
    try:
        for n in range(4):
            await put(store, f"k{n}", os.urandom(KiB))
        assert store.ready_answer("k0", TAG) is not None  # the oldest, read again
        assert not store._lru["k0"] & READ_AGAIN  # marked in its slot alone
        await put(store, "k4", os.urandom(KiB))
        assert store.size_bytes <= 4 * KiB
        assert "k1" not in store._lru  # the oldest not read again: evicted
        assert store.get_now("k1") is None
        assert list(store._lru) == ["k2", "k3", "k4", "k0"]  # spared: most recent
        entry = store.get_now("k0")
        assert isinstance(entry, StoredEntry) and entry.bodies["identity"].size == KiB
    finally:
        await store.close()


async def test_a_ready_answer_is_found_by_its_slot_without_the_recency_list(
    tmp_path: Path,
) -> None:
    """A hit finds the location in the table by the key's hash; a key whose slot
    another key took (two others in its bucket) is found in the recency list, and
    its slot learnt again; another key that shares a slot's check bits is refused by
    the record's key, never answered with another object."""
    async with two_workers(tmp_path) as (store, _other):
        await put(store, "k", b"body")
        assert store._places is not None
        places = store._places
        key_hash = hash("k")
        lookups = store._inline.lookups
        found = store.ready_answer("k", TAG)
        assert found is not None and found.body == b"body" and store.places_found == 1
        # two others take both slots of its bucket
        for check in (1, 2):
            taker = (key_hash & ((1 << CHECK_SHIFT) - 1)) | check << CHECK_SHIFT
            places.put(taker, 4096 << LENGTH_BITS | 64, read=True)
        assert places.find(key_hash) == (-1, 0)
        store.memory.forget_sightings()
        found = store.ready_answer("k", TAG)
        assert found is not None and found.body == b"body"
        assert store.places_found == 1  # from the recency list
        assert places.find(key_hash)[1] != 0  # and learnt again
        # a slot naming k's record under another key's hash: the record decides
        await put(store, "other", b"another body")
        index, _slot = places.find(hash("other"))
        k_location = places.find(key_hash)[1] >> CHECK_BITS & LOCATION_MASK
        other_check = hash("other") >> CHECK_SHIFT & CHECK_MASK
        places.slots[index] = k_location << CHECK_BITS | other_check
        store.memory.forget_sightings()
        misses = store.ready_misses
        found = store.ready_answer("other", TAG)
        assert found is not None and found.body == b"another body"  # from the list
        assert store.ready_misses == misses + 1  # k's record, refused by its key
        assert store._inline.lookups == lookups  # and never the index


async def test_an_eviction_walk_spares_a_bounded_number_of_keys(tmp_path: Path) -> None:
    """Every key read again: one walk spares at most `SECOND_CHANCES` of them and
    still frees what the bound asks."""
    store = await DiskStore.open(str(tmp_path), 1 << 30, memory_bytes=0)
    try:
        count = SECOND_CHANCES + 100
        store._lru.update((f"k{n}", 10 | READ_AGAIN) for n in range(count))
        store.max_bytes = store.size_bytes - 1000  # 1000 bytes over
        victims = store._choose_victims(keep="")
        assert len(victims) == 100  # all of what followed the spared ones
        assert len(store._lru) == SECOND_CHANCES
        assert not any(value & READ_AGAIN for value in store._lru.values())
    finally:
        store._lru.clear()
        await store.close()


async def test_the_front_answers_from_a_ready_answer_as_from_memory(tmp_path: Path) -> None:
    async with ready_edge(tmp_path) as edge:
        body = os.urandom(KiB)
        edge.origin.responds("/a.png", cache_control=FRESH, body=body, ETag='"v1"')
        assert (await edge.get("/a.png")).status == 200
        edge.clock.advance(5)
        from_memory = await edge.get("/a.png")
        assert "hit" in from_memory.headers["Cache-Status"]
        edge.evict("/a.png")
        fill_tier(edge)
        reads, lookups = edge.store.ready_reads, edge.store._inline.lookups
        disk_hits = edge.engine.metrics.disk_hits.value
        ready = await edge.get("/a.png")
        assert edge.store.ready_reads == reads + 1
        assert edge.store._inline.lookups == lookups  # the index was not read
        assert edge.engine.metrics.disk_hits.value == disk_hits + 1
        assert ready.status == 200 and ready.body == body
        assert ready.headers == from_memory.headers  # Age, Date, Cache-Status alike
        assert ready.headers["Age"] == "5" and ready.headers["ETag"] == '"v1"'
        assert edge.origin.count("/a.png") == 1


async def test_a_ready_answer_is_not_used_where_the_lane_would_not_answer(
    tmp_path: Path,
) -> None:
    async with ready_edge(tmp_path) as edge:
        paths = ("/stale.png", "/purged.png", "/coded.png", "/ranged.png", "/plain.png")
        for path in paths:
            edge.origin.responds(path, cache_control="max-age=60", body=b"x" * KiB)
            assert (await edge.get(path)).status == 200
            edge.evict(path)
        fill_tier(edge)
        edge.clock.advance(30)
        edge.purge("/purged.png")
        lane_hits = edge.engine.hot.disk_hits
        purged = await edge.get("/purged.png")
        coded = await edge.get("/coded.png", Accept_Encoding="identity;q=0")
        ranged = await edge.get("/ranged.png", Range="bytes=0-9")
        # each was read, and the lane left it to the full path
        assert edge.store.ready_reads == 3 and edge.engine.hot.disk_hits == lane_hits
        assert "hit" not in purged.headers["Cache-Status"]
        assert edge.origin.count("/purged.png") == 2
        assert "Content-Length" not in coded.headers  # the full path's framing
        assert ranged.status == 206 and ranged.body == b"x" * 10
        plain = await edge.get("/plain.png")  # the same, asked for plainly
        assert edge.engine.hot.disk_hits == lane_hits + 1
        assert plain.headers["Content-Length"] == str(KiB)
        edge.clock.advance(60)
        fill_tier(edge)
        stale = await edge.get("/stale.png")
        assert edge.engine.hot.disk_hits == lane_hits + 1
        assert edge.origin.count("/stale.png") == 2 and stale.status == 200


async def test_a_record_written_over_by_the_wrap_is_not_learnt_again(tmp_path: Path) -> None:
    """The row keeps a ready answer's location after the ring has written another
    record over it. Read once and found written over, the location is forgotten, and
    the read through the index does not teach it back: the reads after it go to the
    index at once instead of trying the dead location first each time."""
    async with two_workers(tmp_path) as (store, _other):
        await put(store, "k", b"body")
        ring = store._disk.ring
        assert ring is not None
        offset, length = split_location(store._lru["k"] >> SIZE_BITS)
        os.pwrite(ring.fd, os.urandom(length), offset)  # as the wrap writes over it
        misses = store.ready_misses
        assert store.ready_answer("k", TAG) is None
        entry = store.get_now("k")  # through the index: the object is still stored
        assert isinstance(entry, StoredEntry) and entry.bodies["identity"].data == b"body"
        tried = store.ready_misses
        assert tried > misses
        store.memory.forget_sightings()
        assert store.ready_answer("k", TAG) is None
        assert store.ready_misses == tried  # no dead location tried again
        assert store._lru["k"] < 1 << SIZE_BITS  # the recency list keeps the size alone


async def test_a_refreshed_object_gets_a_new_ready_answer(tmp_path: Path) -> None:
    """A 304 refreshes an object's metadata (`put_meta`): its old ready answer is
    marked dead and a new one made with the new freshness, so its disk hits stay
    ready answers; another worker holding the old location finds it dead and learns
    the new one from the index."""
    async with two_workers(tmp_path) as (first, second):
        for store in (first, second):
            store.ready_maker = lambda _meta, _codings, _settled: ReadyHead(
                (("identity", b""),), False, "edge1; ", 200, TAG
            )
        await put(first, "k", b"body")
        await synced(second, "k")
        assert second.ready_answer("k", TAG) is not None
        second.memory.forget_sightings()
        await first.put_meta("k", meta(freshness_lifetime=9000.0))
        found = first.ready_answer("k", TAG)
        assert found is not None and found.body == b"body"
        assert found.freshness_lifetime == 9000.0
        assert found.answer.startswith(b"Content-Length: 4\r\n\r\n")
        assert second.ready_answer("k", TAG) is None  # the old one, dead
        assert isinstance(second.get_now("k"), StoredEntry)
        second.memory.forget_sightings()
        found = second.ready_answer("k", TAG)
        assert found is not None and found.freshness_lifetime == 9000.0


async def test_a_refresh_makes_no_ready_answer_for_what_the_maker_refuses(
    tmp_path: Path,
) -> None:
    """No maker's head (an object the lane does not answer from memory either), or
    heads made for other codings than the row's (a stale view of the object: another
    worker added its variants): no new answer, and the old one is still dead."""
    async with two_workers(tmp_path) as (store, _other):
        await put(store, "k", b"body")
        store.ready_maker = lambda _meta, _codings, _settled: None
        await store.put_meta("k", meta(freshness_lifetime=9000.0))
        assert store.ready_answer("k", TAG) is None
        store.ready_maker = lambda _meta, _codings, _settled: ReadyHead(
            (("identity", b""), ("br", b"Content-Encoding: br\r\n")), False, "edge1; ", 200, TAG
        )
        await store.put_meta("k", meta(freshness_lifetime=8000.0))
        assert store.ready_answer("k", TAG) is None
        entry = store.get_now("k")
        assert isinstance(entry, StoredEntry)
        assert isinstance(entry.meta, ObjectMeta) and entry.meta.freshness_lifetime == 8000.0


async def test_a_revalidated_object_is_answered_from_its_new_ready_answer(
    tmp_path: Path,
) -> None:
    """Through the front: a stale object revalidated with a 304 gets a new ready
    answer with the refreshed freshness, and its next disk hit is written from it,
    without the index."""
    async with ready_edge(tmp_path) as edge:
        body = os.urandom(KiB)
        edge.origin.responds("/r.png", cache_control="max-age=10", body=body, etag='"v1"')
        assert (await edge.get("/r.png")).status == 200
        edge.clock.advance(20)  # stale: the next request revalidates
        refreshed = await edge.get("/r.png")
        assert refreshed.status == 200 and refreshed.body == body
        assert edge.origin.count("/r.png") == 2
        # the refresh was stored before the answer: its new record's place is known
        assert edge.store._lru[edge.key("/r.png")] >= 1 << SIZE_BITS
        edge.evict("/r.png")
        fill_tier(edge)
        edge.clock.advance(3)
        reads, lookups = edge.store.ready_reads, edge.store._inline.lookups
        hit = await edge.get("/r.png")
        assert edge.store.ready_reads == reads + 1
        assert edge.store._inline.lookups == lookups  # the index was not read
        assert hit.status == 200 and hit.body == body
        assert "hit" in hit.headers["Cache-Status"] and hit.headers["Age"] == "3"
        assert edge.origin.count("/r.png") == 2
