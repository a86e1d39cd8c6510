"""The shield ring's key placement: even spread, and little movement when a shield goes.

`rendezvous_order` is what `ShieldRing` uses to pick a shield for a cache key, so
these properties hold for the ring every edge runs.
"""

from __future__ import annotations

from collections import Counter

import pytest

from edge.cache.keys import primary_key
from edge.upstream import rendezvous_order

KEYS = [primary_key("site", "www.example.com", f"/assets/{i}.js?v={i % 7}") for i in range(10_000)]


def owners(names: list[str]) -> dict[str, str]:
    """The preferred shield of every key."""
    return {key: rendezvous_order(key, names)[0] for key in KEYS}


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_keys_spread_within_15_percent_of_even(count: int) -> None:
    names = [f"shield{i + 1}" for i in range(count)]
    spread = Counter(owners(names).values())
    even = len(KEYS) / count
    assert set(spread) == set(names)
    for name in names:
        assert abs(spread[name] - even) <= 0.15 * even, (name, spread[name], even)


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_removing_a_shield_moves_at_most_1_3_over_n(count: int) -> None:
    names = [f"shield{i + 1}" for i in range(count)]
    before = owners(names)
    gone = names[count // 2]
    after = owners([n for n in names if n != gone])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert len(moved) <= 1.3 * len(KEYS) / count
    # only the removed shield's keys move, and each to its next choice
    assert all(before[key] == gone for key in moved)
    assert all(after[key] == rendezvous_order(key, names)[1] for key in moved)


def test_adding_a_shield_takes_keys_only_for_itself() -> None:
    names = ["shield1", "shield2", "shield3"]
    before = owners(names)
    after = owners([*names, "shield4"])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert moved
    assert all(after[key] == "shield4" for key in moved)
    assert len(moved) <= 1.3 * len(KEYS) / 4


def test_order_is_the_same_whatever_order_the_fleet_lists_shields() -> None:
    key = primary_key("site", "www.example.com", "/index.html")
    names = ["shield1", "shield2", "shield3", "shield4"]
    assert rendezvous_order(key, names) == rendezvous_order(key, list(reversed(names)))
    assert sorted(rendezvous_order(key, names)) == names
