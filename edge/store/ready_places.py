"""Where ready answers are, by key hash: a table a hit reads instead of the recency
list, so that a hit over a store of 10^6 objects is not a lookup in a dict of 10^6
strings.

`DiskStore` keeps each object's ready-answer location (`edge.store.ready`) in its
recency list beside the object's size. A lookup there over 10^6 keys touches the
dict's index, its entry, the stored key string and the value's int, each somewhere
else in memory: about 0.7 µs, against 0.04 over 10^3 keys. Here a location is one
8-byte slot of a flat table, found from the key's hash alone: about 0.2 µs.

The table is a cache of the recency list, never the authority:
- two slots per bucket (the bucket is the hash's low bits): a key takes either,
  and when both hold other keys it takes one that was not read since the last
  eviction walk, else the first. A key that finds no slot of its own is looked up in
  the recency list, as every key was before;
- a slot holds the location, a few bits of the hash above the bucket's (so another
  key's slot is seldom mistaken for this one's), and the read mark eviction's
  CLOCK gives a second chance to (`READ_AGAIN` in the recency list);
- a slot that still names a record after that record was replaced, deleted or
  overwritten is as safe as the recency list's own stale locations: the record's
  checks (alive, this key, this maker, its checksum) decide, and a record that
  fails them clears the slot.

The table is an anonymous mapping: its pages cost memory only once a key lands in
them, a page at most per key, so a store of 10^3 objects takes under 4 MiB of a
table of 16.
"""

from __future__ import annotations

import mmap

__all__ = [
    "CHECK_BITS",
    "CHECK_MASK",
    "CHECK_SHIFT",
    "LOCATION_MASK",
    "PLACES_MAX",
    "PLACES_MIN",
    "READ_MARK",
    "ReadyPlaces",
    "places_for",
]

#: bits of a slot holding bits of the key's hash (above any bucket's bits)
CHECK_BITS = 11
CHECK_MASK = (1 << CHECK_BITS) - 1
#: the hash's bits the check takes: above the largest table's bucket bits
CHECK_SHIFT = 32
#: a location's bits (`edge.store.ready.location`: a 4 GiB ring's offset and the
#: record's length, 52 bits)
LOCATION_BITS = 52
LOCATION_MASK = (1 << LOCATION_BITS) - 1
#: set in a slot by a read (`ReadyPlaces.mark`), cleared by eviction's second chance
READ_MARK = 1 << 63
#: slots in a table, at least and at most (a slot is 8 bytes: at most 16 MiB)
PLACES_MIN = 1 << 12
PLACES_MAX = 1 << 21
#: bytes of ring per slot when sizing a table (`places_for`): records of 1 KiB
#: objects are about 1.5 KiB, so a full ring of them leaves slots spare
RING_BYTES_PER_SLOT = 1024


def places_for(ring_bytes: int) -> int:
    """Slots for a ring of `ring_bytes`: one per `RING_BYTES_PER_SLOT`, a power of
    two within `PLACES_MIN` and `PLACES_MAX`."""
    wanted = max(PLACES_MIN, ring_bytes // RING_BYTES_PER_SLOT)
    return min(PLACES_MAX, 1 << (wanted - 1).bit_length())


class ReadyPlaces:
    """A table of ready-answer locations by key hash, two slots per bucket."""

    def __init__(self, slots: int) -> None:
        """A table of `slots` slots (a power of two, at least 2), all empty."""
        if slots < 2 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two, got {slots}")
        # private: its pages are the process's own memory (RssAnon), as they are
        self._memory = mmap.mmap(-1, slots * 8, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        #: the slots, 8 bytes each: 0 when empty, else
        #: `READ_MARK | location << CHECK_BITS | check`
        self.slots = memoryview(self._memory).cast("Q")
        #: a hash's bucket: its first slot (the other is the one after it)
        self.bucket_mask = (slots - 1) & ~1

    def __len__(self) -> int:
        """Slots in the table."""
        return len(self.slots)

    def find(self, key_hash: int) -> tuple[int, int]:
        """(slot index, slot) of `key_hash`'s slot; (-1, 0) when it has none."""
        slots = self.slots
        check = (key_hash >> CHECK_SHIFT) & CHECK_MASK
        index = key_hash & self.bucket_mask
        slot = slots[index]
        if slot & CHECK_MASK == check and slot:
            return index, slot
        slot = slots[index + 1]
        if slot & CHECK_MASK == check and slot:
            return index + 1, slot
        return -1, 0

    def put(self, key_hash: int, location: int, read: bool = False) -> None:
        """Keep `location` as `key_hash`'s (`read`: with the read mark set)."""
        if location > LOCATION_MASK:
            return  # not from a ring this table is made for: the list keeps it
        slots = self.slots
        check = (key_hash >> CHECK_SHIFT) & CHECK_MASK
        index = key_hash & self.bucket_mask
        first, second = slots[index], slots[index + 1]
        if second and second & CHECK_MASK == check:
            index += 1  # its own slot, the second of the bucket
        elif not first or first & CHECK_MASK == check:
            pass
        elif not second or (first & READ_MARK and not second & READ_MARK):
            index += 1  # free, or the other was read since the last walk
        slots[index] = (READ_MARK if read else 0) | location << CHECK_BITS | check

    def drop(self, key_hash: int) -> None:
        """Forget `key_hash`'s slot, if it has one (another key whose check is the same
        loses its slot too, and is looked up in the recency list: still right)."""
        index, _slot = self.find(key_hash)
        if index >= 0:
            self.slots[index] = 0

    def take_mark(self, key_hash: int, location: int) -> bool:
        """Whether `key_hash`'s slot, at `location`, was read since the mark was last
        taken (`mark`); the mark is cleared. For eviction's second chance."""
        index, slot = self.find(key_hash)
        if slot & READ_MARK and (slot >> CHECK_BITS) & LOCATION_MASK == location:
            self.slots[index] = slot ^ READ_MARK
            return True
        return False

    def close(self) -> None:
        """Release the table (it is unusable after)."""
        self.slots.release()
        self._memory.close()
