"""The memory tier on its own: a bounded LRU of entries, counted by what they take in
memory (their body bytes and their metadata's header fields)."""

from __future__ import annotations

import pickle
import tracemalloc

from edge.cache.storing import build_meta
from edge.store import BodyRef, MemoryTier, StoredEntry
from edge.store.memory_tier import ENTRY_OVERHEAD


def entry(key: str, size: int, *, held: bool = True) -> StoredEntry:
    data = b"x" * size if held else None
    path = None if held else f"/bodies/{key}"
    return StoredEntry(key, "meta", {"identity": BodyRef("identity", size, data, path)})


def test_the_least_recently_used_entry_goes_first_over_the_bound() -> None:
    tier = MemoryTier(max_bytes=3 * (ENTRY_OVERHEAD + 1000))
    for key in ("a", "b", "c"):
        tier.put(entry(key, 1000))
    assert tier.get("a") is not None  # now the most recently used
    tier.put(entry("d", 1000))
    assert tier.get("b") is None
    assert [key for key in "acd" if tier.get(key) is not None] == ["a", "c", "d"]
    assert tier.used == 3 * (ENTRY_OVERHEAD + 1000)


def test_only_bytes_held_in_memory_count() -> None:
    tier = MemoryTier(max_bytes=2 * ENTRY_OVERHEAD)
    tier.put(entry("on-disk", 10_000_000, held=False))
    assert tier.get("on-disk") is not None
    assert tier.used == ENTRY_OVERHEAD


def test_an_entry_larger_than_the_tier_is_not_held_and_evicts_nothing() -> None:
    tier = MemoryTier(max_bytes=ENTRY_OVERHEAD + 1000)
    tier.put(entry("small", 1000))
    tier.put(entry("huge", 5000))
    assert tier.get("huge") is None
    assert tier.get("small") is not None


def test_replacing_and_discarding_keep_the_count_right() -> None:
    tier = MemoryTier(max_bytes=10 * ENTRY_OVERHEAD)
    tier.put(entry("k", 100))
    tier.put(entry("k", 300))
    assert tier.used == ENTRY_OVERHEAD + 300
    assert len(tier) == 1
    tier.discard("k")
    tier.discard("k")
    assert tier.used == 0
    assert len(tier) == 0


def test_an_entry_past_its_ttl_is_gone() -> None:
    tier = MemoryTier(max_bytes=10 * ENTRY_OVERHEAD, ttl=-1.0)  # expired as it is put
    tier.put(entry("k", 100))
    assert tier.get("k") is None
    assert tier.used == 0


def test_the_bound_holds_for_small_objects_with_real_metadata() -> None:
    # entries as the disk store makes them: an ObjectMeta unpickled from its index
    # row (several KiB of header fields) beside a 1 KiB body
    pairs = (
        ("Server", "nginx/1.22.1"),
        ("Date", "Tue, 01 Dec 2026 00:20:00 GMT"),
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", "1024"),
        ("Last-Modified", "Tue, 01 Dec 2026 00:10:00 GMT"),
        ("ETag", '"692c5e38-400"'),
        ("Cache-Control", "public, max-age=3600"),
        ("Accept-Ranges", "bytes"),
    )
    rows = [
        pickle.dumps(
            build_meta(
                status=200,
                upstream_pairs=pairs,
                request_time=1.0,
                response_time=1.0,
                stored_at=1.0,
                service="s",
                host="www.example.com",
                target=f"/bin/1k?u={n}",
                compressible=False,
            )
        )
        for n in range(3000)
    ]
    bound = 1024 * 1024
    tracemalloc.start()
    try:
        tier = MemoryTier(max_bytes=bound)
        before = tracemalloc.get_traced_memory()[0]
        for n, row in enumerate(rows):
            key = f"s\x1fwww.example.com\x1f/bin/1k?u={n}"
            body = {"identity": BodyRef("identity", 1024, bytes(1024), None)}
            tier.put(StoredEntry(key, pickle.loads(row), body))
            del key, body
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert tier.used <= bound
    assert len(tier) < 3000  # the bound was reached: what follows is what it holds
    assert held <= bound * 1.1, f"{held} bytes held by a tier bounded to {bound}"


def test_a_full_tier_admits_an_object_read_from_disk_on_its_second_read() -> None:
    cost = ENTRY_OVERHEAD + 1000
    tier = MemoryTier(max_bytes=3 * cost)
    assert tier.admit(entry("a", 1000)) and tier.admit(entry("b", 1000))  # room: held
    assert tier.admit(entry("c", 1000))
    # full: one read of a cold object is remembered, not held, and evicts nothing
    assert not tier.admit(entry("cold", 1000))
    assert tier.get("cold") is None and len(tier) == 3
    assert tier.admit(entry("cold", 1000))  # read again: held, the oldest goes
    assert tier.get("cold") is not None and tier.get("a") is None
    # what left the tier (evicted, or expired) comes back in on its next read
    assert tier.admit(entry("a", 1000))


def test_a_scan_of_cold_objects_leaves_the_hot_ones_in_memory() -> None:
    cost = ENTRY_OVERHEAD + 1000
    tier = MemoryTier(max_bytes=10 * cost)
    hot = [f"hot{n}" for n in range(5)]
    for key in hot:
        tier.admit(entry(key, 1000))
    for n in range(1000):  # a crawler reading the long tail once each
        tier.admit(entry(f"cold{n}", 1000))
        for key in hot:
            assert tier.get(key) is not None, (n, key)
    assert len(tier) <= 10


def test_an_entry_that_expired_comes_back_on_its_next_read() -> None:
    cost = ENTRY_OVERHEAD + 1000
    tier = MemoryTier(max_bytes=cost, ttl=-1.0)  # expired as it is put
    tier.put(entry("other", 1000))
    tier.put(entry("k", 1000))
    assert tier.get("k") is None  # expired: its key is remembered
    tier.put(entry("filler", 1000))  # the tier is full again
    assert tier.admit(entry("k", 1000))


def test_keys_read_once_are_remembered_within_a_bound() -> None:
    """A full tier remembers the keys read (a key answered without an entry, as a
    ready answer is, is held on its third read), the last of them only: a scan of a
    long tail never grows what it remembers."""
    cost = ENTRY_OVERHEAD + 1000
    tier = MemoryTier(max_bytes=64 * 4096)  # remembers 32 to 64 keys
    # with room, a read answered without an entry is not held either
    assert tier.passes_by("with-room") and tier.passes_by("with-room")
    assert not tier.passes_by("with-room")
    while tier.used + cost <= tier.max_bytes:
        tier.put(entry(f"held{len(tier)}", 1000))
    assert tier.passes_by("early")  # full: a first read is not held
    for n in range(20):
        tier.passes_by(f"cold{n}")
    assert tier.passes_by("early")  # the second: answered without an entry
    assert not tier.passes_by("early")  # the third: would be held
    assert not tier.admit(entry("cold-admitted", 1000))
    assert tier.admit(entry("cold-admitted", 1000))  # read with an entry: the second
    assert tier.passes_by("forgotten") and tier.passes_by("forgotten")
    for n in range(10_000):
        tier.passes_by(f"tail{n}")
        tier.passes_by(f"tail{n}")
    assert tier.passes_by("forgotten")  # 10^4 reads later: a first read again
    assert tier.passes_by("forgotten")
    remembered = (tier._seen_now, tier._seen_before, tier._twice_now, tier._twice_before)
    assert sum(len(sightings) for sightings in remembered) <= 128
