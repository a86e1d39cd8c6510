"""What the memory tier charges for an entry: its bodies held in memory and its
header fields, each at its characters plus a fixed overhead."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from edge.store.interface import BodyRef, StoredEntry
from edge.store.memory_tier import ENTRY_OVERHEAD, PAIR_OVERHEAD, entry_cost

FIELDS = st.lists(st.tuples(st.text(max_size=20), st.text(max_size=60)), max_size=12)


def _meta(upstream: list[tuple[str, str]], client: list[tuple[str, str]]) -> SimpleNamespace:
    """Metadata with the two header tables the tier charges for (any object will do)."""
    return SimpleNamespace(upstream_headers=tuple(upstream), client_headers=tuple(client))


@given(FIELDS, FIELDS, st.binary(max_size=64))
def test_an_entry_costs_its_bodies_and_fields(
    upstream: list[tuple[str, str]], client: list[tuple[str, str]], body: bytes
) -> None:
    entry = StoredEntry(
        "k",
        _meta(upstream, client),
        {"identity": BodyRef("identity", len(body), body, "", 0)},
    )
    expected = ENTRY_OVERHEAD + len(body)
    for name, value in [*upstream, *client]:
        expected += PAIR_OVERHEAD + len(name) + len(value)
    assert entry_cost(entry) == expected


def test_a_body_on_disk_only_costs_nothing_beyond_the_entry() -> None:
    entry = StoredEntry("k", _meta([], []), {"identity": BodyRef("identity", 10, None, "/p", 0)})
    assert entry_cost(entry) == ENTRY_OVERHEAD
