"""The memory tier: a bounded LRU of entries held in memory, so a hot hit needs
neither disk nor the I/O gateway.

`DiskStore` keeps metadata here for every entry it reads or writes, and the bodies
of small objects (`memory_object_max`) beside it; `DiskStore.peek` answers from here
synchronously. Each worker process has its own; `ttl` bounds how long an entry is
trusted before the shared index is read again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from edge.store.interface import StoredEntry

__all__ = ["ENTRY_OVERHEAD", "PAIR_OVERHEAD", "SEEN_ONCE_MAX", "MemoryTier", "entry_cost"]

#: what one entry costs in memory besides its bodies and header fields: the
#: `StoredEntry`, its `BodyRef`s, the metadata object with its other fields, the
#: tier's own node (measured with tracemalloc: docs/benchmarks.md, "Store scale")
ENTRY_OVERHEAD = 768
#: what one header field of the metadata costs besides its characters: a 2-tuple
#: and two str objects (56 + 2 x 49 bytes, rounded up to the allocator's sizes)
PAIR_OVERHEAD = 160
#: keys remembered as read once from disk but not admitted (a second read admits
#: them): at most this many, and one per 4 KiB of the tier's bound (a remembered key
#: is its hash in a set, about 60 bytes: at most 1.5% of the bound)
SEEN_ONCE_MAX = 16_384


def entry_cost(entry: StoredEntry) -> int:
    """The bytes `entry` takes in memory, as the tier charges them: its bodies held
    in memory, and its metadata's header fields (an `ObjectMeta` keeps the upstream's
    fields and the client's, several KiB for a small object: counted at 512 bytes an
    entry, a tier of small objects held several times its bound)."""
    cost = ENTRY_OVERHEAD
    for ref in entry.bodies.values():
        if ref.data is not None:
            cost += len(ref.data)
    meta = entry.meta
    # the store holds any meta; an ObjectMeta's header tables are what make it large
    for table in (getattr(meta, "upstream_headers", ()), getattr(meta, "client_headers", ())):
        for name, value in table:
            cost += PAIR_OVERHEAD + len(name) + len(value)
    return cost


class MemoryTier:
    """A bounded LRU of entries kept in memory: metadata, and bodies when small."""

    def __init__(self, max_bytes: int, ttl: float = float("inf")) -> None:
        self.max_bytes = max_bytes
        #: seconds an entry is trusted before it is read from the index again
        self.ttl = ttl
        self.used = 0
        self._entries: OrderedDict[str, tuple[StoredEntry, int, float]] = OrderedDict()
        #: called with the key of every entry that leaves the tier (evicted, expired,
        #: discarded, replaced), so what others built from it (the hot lane's prepared
        #: answers) goes with it instead of keeping its bodies alive beyond the bound
        self.on_drop: list[Callable[[str], None]] = []
        #: hashes of keys read from disk once while the tier was full, and of keys
        #: that left it (evicted, or expired by `ttl`): their next read is admitted
        #: (`admit`). Two generations: when the newer holds half the bound it becomes
        #: the older and the older is dropped, so the last half to whole bound of
        #: sightings are remembered for two set operations each (an ordered dict
        #: kept exactly the last ones for four, on every read of a large store)
        self._seen_now: set[int] = set()
        self._seen_before: set[int] = set()
        self._seen_half = max(8, min(SEEN_ONCE_MAX, max_bytes // 4096) // 2)
        #: of those, the keys answered a second time without an entry (`passes_by`),
        #: kept the same way: their third read is admitted
        self._twice_now: set[int] = set()
        self._twice_before: set[int] = set()

    def get(self, key: str) -> StoredEntry | None:
        """The entry, marked most recently used; None once it is older than `ttl`."""
        item = self._entries.get(key)
        if item is None:
            return None
        if item[2] < time.monotonic():
            self.discard(key)
            self._seen(key)  # it was held: its next read comes straight back in
            return None
        self._entries.move_to_end(key)
        return item[0]

    def put(self, entry: StoredEntry) -> None:
        """Hold an entry, evicting the least recently used ones beyond the bound."""
        cost = entry_cost(entry)
        self.discard(entry.key)
        if cost > self.max_bytes:
            return
        self._entries[entry.key] = (entry, cost, time.monotonic() + self.ttl)
        self.used += cost
        while self.used > self.max_bytes:
            old_key, (_, old_cost, _) = self._entries.popitem(last=False)
            self.used -= old_cost
            self._seen(old_key)
            for dropped in self.on_drop:
                dropped(old_key)

    def holds(self, entry: StoredEntry) -> bool:
        """Whether the tier holds this very entry (what is built from it may be kept
        as long as the tier keeps it: `on_drop` says when it goes)."""
        item = self._entries.get(entry.key)
        return item is not None and item[0] is entry

    def admit(self, entry: StoredEntry) -> bool:
        """Hold an entry read from disk when the tier has room for it or its key was
        read before (or held before); otherwise only remember the key. Whether it
        was held is the answer.

        One read of a cold object is no sign it will be read again: a crawler or a
        sweep over the long tail would otherwise push the hot set out of memory, one
        object at a time, and pay the tier's bookkeeping for objects read once (Apache
        Traffic Server's RAM cache admits on a second sighting the same way).
        Objects being filled are put in directly (`put`): a fill follows a request.
        """
        key = entry.key
        sighting = hash(key)
        if sighting in self._seen_now or sighting in self._seen_before:
            self._seen_now.discard(sighting)
            self._seen_before.discard(sighting)
        elif (
            # a full tier has no room for any entry: its cost need not be counted
            self.used + ENTRY_OVERHEAD > self.max_bytes
            or self.used + entry_cost(entry) > self.max_bytes
        ):
            self._seen(key)
            return False
        self.put(entry)
        return True

    def passes_by(self, key: str) -> bool:
        """Whether a read of `key` from disk, by a reader that can answer without an
        entry (a ready answer, `DiskStore.ready_answer`), need not make one: the key
        was not read twice before (remembered here), whether the tier has room or not.

        `admit` holds an object on its second read (on its first while the tier has
        room); one answered without an entry is held on its third. Its answer costs
        a few µs more than a memory hit, and an entry costs an index read (about
        30 µs): uniform reads over a store far larger than the tier read a key again
        within the remembered window often enough (about one read in 60 over 10^6
        keys) to pay that for an entry the tier drops long before the key comes
        back, and an empty tier after a restart took the first 15,000 reads that
        way."""
        sighting = hash(key)
        seen = self._seen_now
        if sighting not in seen and sighting not in self._seen_before:
            seen.add(sighting)  # `_seen`, without a second call on every hit
            if len(seen) >= self._seen_half:
                self._seen_before = seen
                self._seen_now = set()
            return True
        if sighting in self._twice_now or sighting in self._twice_before:
            return False  # its third read: made an entry, and held (`admit`)
        twice = self._twice_now
        twice.add(sighting)
        if len(twice) >= self._seen_half:
            self._twice_before = twice
            self._twice_now = set()
        return True

    def forget_sightings(self) -> None:
        """Forget every key read once (their next read is again a first one)."""
        self._seen_now.clear()
        self._seen_before.clear()
        self._twice_now.clear()
        self._twice_before.clear()

    def _seen(self, key: str) -> None:
        seen = self._seen_now
        seen.add(hash(key))  # not the key: a remembered key keeps no string alive
        if len(seen) >= self._seen_half:
            self._seen_before = seen
            self._seen_now = set()

    def discard(self, key: str) -> None:
        """Forget a key."""
        item = self._entries.pop(key, None)
        if item is not None:
            self.used -= item[1]
            for dropped in self.on_drop:
                dropped(key)

    def __len__(self) -> int:
        return len(self._entries)
