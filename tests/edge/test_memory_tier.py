"""The memory tier on its own: a bounded LRU of entries, counted by their body bytes."""

from __future__ import annotations

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
