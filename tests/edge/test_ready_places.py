"""The table of ready-answer locations by key hash (edge/store/ready_places.py): a
cache of the recency list's locations, two slots a bucket, that a hit reads instead
of a lookup over every key. What it must never do is name one key's location for
another without the record's checks deciding; what it may do is forget."""

from __future__ import annotations

import pytest

from edge.store.ready_places import (
    CHECK_SHIFT,
    PLACES_MAX,
    PLACES_MIN,
    READ_MARK,
    ReadyPlaces,
    places_for,
)

SLOTS = 1 << 10


def same_bucket(key_hash: int, check: int) -> int:
    """A hash in `key_hash`'s bucket with the check bits `check`."""
    return (key_hash & ((1 << CHECK_SHIFT) - 1)) | check << CHECK_SHIFT


@pytest.fixture
def places() -> ReadyPlaces:
    return ReadyPlaces(SLOTS)


def test_a_location_is_found_by_its_hash_and_forgotten(places: ReadyPlaces) -> None:
    places.put(12345, 777)
    index, slot = places.find(12345)
    assert index >= 0 and slot != 0
    places.drop(12345)
    assert places.find(12345) == (-1, 0)


def test_two_keys_of_one_bucket_keep_their_own_slots(places: ReadyPlaces) -> None:
    first, second = same_bucket(40, 1), same_bucket(40, 2)
    places.put(first, 100)
    places.put(second, 200)
    places.put(first, 101)  # moved: its own slot, not the other's
    assert places.take_mark(first, 101) is False  # not read yet
    places.put(first, 101, read=True)
    places.put(second, 200, read=True)
    assert places.take_mark(first, 101) and places.take_mark(second, 200)
    assert places.find(first)[0] != places.find(second)[0]


def test_a_third_key_of_a_bucket_takes_the_slot_not_read_since(places: ReadyPlaces) -> None:
    first, second, third = (same_bucket(8, check) for check in (1, 2, 3))
    places.put(first, 100, read=True)
    places.put(second, 200)
    places.put(third, 300)
    assert places.find(first)[1] != 0  # read since the last walk: kept
    assert places.find(second) == (-1, 0)  # taken by the third
    assert places.find(third)[1] != 0


def test_a_hash_with_other_check_bits_is_not_given_a_slot(places: ReadyPlaces) -> None:
    places.put(same_bucket(64, 5), 100)
    assert places.find(same_bucket(64, 6)) == (-1, 0)
    places.drop(same_bucket(64, 6))  # not its slot: the other stays
    assert places.find(same_bucket(64, 5))[1] != 0


def test_the_read_mark_is_taken_once_and_only_at_its_location(places: ReadyPlaces) -> None:
    places.put(99, 500, read=True)
    assert places.find(99)[1] & READ_MARK
    assert places.take_mark(99, 501) is False  # another location: another record
    assert places.take_mark(99, 500) is True
    assert places.take_mark(99, 500) is False  # taken: needs another read


def test_the_largest_location_a_ring_gives_is_kept_whole(places: ReadyPlaces) -> None:
    largest = ((4 << 30) - 1) << 20 | ((1 << 20) - 1)  # a 4 GiB ring: last offset, longest
    places.put(7, largest, read=True)
    assert places.take_mark(7, largest)
    places.put(8, largest + 1)  # wider than a slot holds: not kept, no error
    assert places.find(8) == (-1, 0)


def test_a_table_is_sized_by_its_ring_within_bounds() -> None:
    assert places_for(0) == PLACES_MIN
    assert places_for(16 << 20) == 16 << 10
    assert places_for(1 << 40) == PLACES_MAX
    assert len(ReadyPlaces(places_for(3 << 20))) == 4096
    with pytest.raises(ValueError, match="power of two"):
        ReadyPlaces(1000)
