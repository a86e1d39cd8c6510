"""`DiskStore`: the production store, a diskcache index and body files under one
directory, with a memory tier in front.

A hot hit is answered by `peek` from the memory tier with neither disk nor the I/O
gateway; everything else calls the blocking half (`DiskIndex`) through the gateway.

diskcache runs with eviction disabled: its least-recently-used policy writes to SQLite
on every read (perf-notes: 166 µs against 24 µs per get), so the store keeps its own
recency in memory and its own byte count of the body files, and evicts when a commit
takes it over `max_bytes`. Worker processes may share a directory: the byte total is
a counter in the index, changed in the same transaction as the rows, so it is right
across processes and crashes; recency is each process's own (what it stored, read or
found at open, and what the others stored, added by its syncs), so with several
workers eviction is close to LRU, not exact.

The recency list is also the process's view of which keys the index holds: a key
not in it is absent without a lookup (`_known_absent`), and the keys other
processes store reach it within `SYNC_INTERVAL` (`_sync`).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import resource
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import diskcache
import xxhash

from edge.store.base import READ_AGAIN, SIZE_BITS, SIZE_MASK, StoreBase
from edge.store.disk_index import ROW_BODY_MAX, DiskIndex, Install, _read_small, _Record
from edge.store.disk_inline import (
    DEFER,
    INLINE_PAUSE,
    INLINE_SLOW,
    Defer,
    InlineReader,
    memory_backed,
    read_mode,
)
from edge.store.disk_layout import AddVariants
from edge.store.interface import (
    NOT_NOW,
    BodyCorrupt,
    BodyRef,
    KiB,
    MiB,
    NotNow,
    StoredEntry,
    StoreError,
    body_checksum,
)
from edge.store.memory_tier import MemoryTier
from edge.store.ready import (
    LENGTH_BITS,
    LENGTH_MASK,
    READY_BODY_MAX,
    ReadyHead,
    ReadyRecord,
    encode_record,
    parse_record,
    parse_record_at,
)
from edge.store.ready_places import (
    CHECK_BITS,
    CHECK_MASK,
    CHECK_SHIFT,
    LOCATION_MASK,
    READ_MARK,
    ReadyPlaces,
    places_for,
)
from edge.store.writer import BodyWriter

__all__ = ["SCRUB_CHUNK", "SCRUB_OBJECT_MIN", "DiskStore"]

#: distinct body sizes whose int objects the recency list shares (a bound, so a
#: store of objects all of different sizes does not grow a second table)
SIZE_OBJECTS = 65536
#: the least recency-list value that holds a ready answer's location
READY_ONE = 1 << SIZE_BITS
#: bytes the scrubber reads per step (it sleeps between steps to keep to its rate)
SCRUB_CHUNK = 1 * MiB
#: how often (seconds) at most a store reads the keys other processes sharing its
#: directory have stored since it last looked (`DiskStore._sync`); between two, a
#: key not in its recency list is absent without a lookup. A sync costs one SELECT
#: of the newest rows (about as much as the lookup of one absent key), so at 5 ms it
#: is paid at most 200 times a second whatever the miss rate, while a key another
#: worker has just stored is seen after at most 5 ms more: less than a fill takes
#: (an upstream round trip and a commit), the window in which two workers already
#: both fetch a key they miss at the same time (no collapsing across workers)
SYNC_INTERVAL = 0.005
#: rows one sync reads at most (a few hundred µs on the event loop): a store that
#: finds more new rows than that (another worker filled it while this one was idle)
#: reads them in steps, one per `get`, and looks keys up meanwhile
SYNC_ROWS = 1000
#: bytes each object scrubbed counts as at least (see `DiskStore.scrub`): at the
#: default 8 MiB/s, at most 128 objects a second
SCRUB_OBJECT_MIN = 64 * KiB


def _device_waits() -> int:
    """Major page faults and block reads of the calling thread so far."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_majflt + usage.ru_inblock


class DiskStore(StoreBase):
    """The production store: a diskcache index and body files under one directory.

    Open it with `store = await DiskStore.open(directory, max_bytes)`; opening cleans
    temp files of dead writers, sweeps unreferenced body files and counts the bytes
    of what is stored (all on the I/O gateway). Close it with `await store.close()`.
    The blocking half lives in `DiskIndex`; this half keeps the memory tier, recency
    and per-key locks, and calls the index only through the gateway.
    """

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        memory_bytes: int = 64 * MiB,
        memory_object_max: int = 256 * KiB,
        memory_ttl: float = 2.0,
        row_body_max: int = ROW_BODY_MAX,
    ) -> None:
        """Not usable until opened; use `DiskStore.open`."""
        self.directory = os.path.abspath(directory)
        owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        super().__init__(max_bytes, os.path.join(self.directory, "tmp", owner))
        self.memory = MemoryTier(memory_bytes, memory_ttl)
        self._sizes: dict[int, int] = {}
        self.memory_object_max = memory_object_max
        self._disk = DiskIndex(
            self.directory, self._tmp_dir, memory_object_max, row_body_max, max_bytes
        )
        #: makes an object's ready answer when it is stored (`edge.store.ready`):
        #: set by the front that reads them (edge.front.h1_hits); None makes none
        #: (called with the metadata, the codings of the bodies it will answer from,
        #: and whether those are every coding the object will get)
        self.ready_maker: Callable[[object, tuple[str, ...], bool], ReadyHead | None] | None = None
        #: hits answered from a ready answer (`ready_answer`), and ready answers
        #: found dead, overwritten or made by another maker
        self.ready_reads = 0
        self.ready_misses = 0
        #: ready answers' locations by key hash (`edge.store.ready_places`), a cache
        #: of the recency list's that a hit reads first; set by `open` with the ring
        self._places: ReadyPlaces | None = None
        #: ready answers found through `_places`, without the recency list
        self.places_found = 0
        #: the ring mapped for reads (`ReadyRing.map_for_reads`), while it is open:
        #: cleared when `close` starts, so no hit on the loop slices a mapping the
        #: gateway is closing
        self._view: mmap.mmap | None = None
        #: commits (and variants added) waiting for the committer task, which
        #: indexes them in one batch
        self._pending: list[tuple[Install | AddVariants, asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None
        #: index transactions that carried commits, and the commits they carried
        self.commit_batches = 0
        self.commits = 0
        #: index transactions that carried variants added (`add_encodings`)
        self.variant_batches = 0
        #: index commit batches on the event loop: the directory is in memory
        #: (tmpfs), where a transaction never waits on a device, and the hand-off to
        #: a gateway thread and back costs more than the transaction (cold misses of
        #: 1 KiB about 10% faster: docs/benchmarks.md). Set by `open`.
        self.commit_inline = False
        #: commits whose body was written in place by the index's own call (no temp file)
        self.commits_in_place = 0
        #: reads of the index and small bodies on the event loop (`disk_inline`)
        self._inline = InlineReader(self.directory, "off", memory_object_max)
        #: `time.monotonic()` before which the inline path stays off (after a slow load)
        self._inline_off_until = 0.0
        #: keys whose eviction is on its way to the index (an inline read must not
        #: promote them again, as a gateway read racing it does not: `_version`)
        self._evicting_keys: set[str] = set()
        #: `_device_waits()` on the event loop's thread when last looked at
        self._device_waits = 0
        #: times the inline path was turned off after a load that waited on the device
        self.inline_pauses = 0
        #: `get`s answered on the event loop (an object or its absence), and those
        #: that went to the gateway
        self.inline_loads = 0
        self.gateway_loads = 0
        #: the largest row id of the index read so far (at open, then by `_sync`)
        self._synced_rowid = 0
        #: `time.monotonic()` of the last sync (none yet: one is due)
        self._synced_at = -SYNC_INTERVAL
        #: syncs of the keys stored by other processes, and `get`s answered absent
        #: from the recency list alone, no SQL (counted in `inline_loads` too)
        self.syncs = 0
        self.absent_known = 0
        #: what `get_now` last read from disk and did not hold in the memory tier (an
        #: entry, or a row left to the gateway), with `_version` and `time.monotonic()`
        #: then, for the `get` of the same key that follows it; kept for
        #: `SYNC_INTERVAL` at most, so a row another process has replaced is not
        #: missed for longer than a sync would miss it
        self._deferred: tuple[str, int, float, StoredEntry | Defer] | None = None

    @classmethod
    async def open(
        cls,
        directory: str,
        max_bytes: int,
        memory_bytes: int = 64 * MiB,
        memory_object_max: int = 256 * KiB,
        memory_ttl: float = 2.0,
        row_body_max: int = ROW_BODY_MAX,
        commit_inline: bool | None = None,
    ) -> DiskStore:
        """Open (creating if needed) the store in `directory`.

        `memory_ttl` bounds how long the memory tier trusts an entry before reading the
        index again: worker processes sharing the directory see each other's deletes
        and replacements within that time (one disk read per hot key per period).
        `row_body_max`: bodies up to this size are kept in their index row, not in
        a file (`ROW_BODY_MAX`; 0 keeps every body in a file, as before).
        `commit_inline`: index commit batches on the event loop, not the gateway
        (`commit_inline`); None decides by the filesystem (`memory_backed`).
        """
        store = cls(directory, max_bytes, memory_bytes, memory_object_max, memory_ttl, row_body_max)
        keys, sizes = await store._run(store._disk.start)
        store._synced_rowid = store._disk.top_rowid
        store._inline.mode = await store._run(read_mode, store.directory)
        if commit_inline is None:
            commit_inline = await store._run(memory_backed, store.directory)
        store.commit_inline = commit_inline
        if commit_inline and store._disk.ring is not None:
            store._disk.ring.map_for_reads()  # in memory: no read can fail on a device
            store._view = store._disk.ring.view
        store._device_waits = _device_waits()
        # the values as `start` made them (sizes shared, locations packed above): a
        # second int made here per object would leave the first's memory holey
        store._lru.update(zip(keys, sizes, strict=True))
        if store._disk.ring is not None:
            store._places = places = ReadyPlaces(places_for(store._disk.ring.capacity))
            put = places.put
            for key, value in zip(keys, sizes, strict=True):
                if value >= READY_ONE:
                    put(hash(key), value >> SIZE_BITS)
        del keys, sizes
        victims = store._pick_victims(keep="")
        if victims:
            await store._run(store._disk.delete, victims)
        return store

    @property
    def size_bytes(self) -> int:
        """Bytes of body data stored in the directory (by every process using it)."""
        return self._disk.bytes

    @property
    def index(self) -> diskcache.Cache:
        """The diskcache index (open)."""
        return self._disk.index

    def _account(self, key: str, size: int | None, ready: int = 0) -> None:
        """Recency only: the byte total is the shared counter in the index. `ready`:
        the location of the object's ready answer (0: none), kept above the size."""
        self._lru.pop(key, None)
        places = self._places
        if places is not None:
            if size is not None and ready > 0:
                places.put(hash(key), ready)
            else:
                places.drop(hash(key))
        if size is not None:
            if ready > 0:
                self._lru[key] = size | ready << SIZE_BITS
                return
            # one int object per distinct size, not one per key: 28 bytes of the
            # ~240 each stored object costs in memory (docs/benchmarks.md)
            if len(self._sizes) < SIZE_OBJECTS:
                size = self._sizes.setdefault(size, size)
            self._lru[key] = size

    # -- the interface

    def _entry(self, key: str, record: _Record, data: Mapping[str, bytes]) -> StoredEntry:
        """The entry of a row: a body kept in the row has its bytes and no path; a
        file body has its path, and its bytes when `data` holds them."""
        bodies = {
            enc: BodyRef(enc, size, place, None, checksum)
            if isinstance(place, bytes)
            else BodyRef(enc, size, data.get(enc), self._disk.abs_path(place), checksum)
            for enc, place, size, checksum in record.bodies
        }
        return StoredEntry(key, record.meta, bodies)

    @property
    def durable_commits(self) -> int:
        """Objects this process committed to stable storage (`begin(durable=True)`)."""
        return self._disk.durable_commits

    def forget_cached(self, key: str) -> None:
        """Drop `key` from the memory tier, so the next `get` reads the index."""
        self.memory.discard(key)

    def ready_answer(self, key: str, tag: int) -> ReadyRecord | None:
        """The ready answer of `key` made by the maker `tag` (`edge.store.ready`), read
        with one `pread` and checked, without the index; None when there is none, or
        it is dead (replaced or deleted by any process), overwritten or damaged:
        then the index decides, and the location is forgotten here. Also None when
        the memory tier would admit the object (`MemoryTier.passes_by`: this is the
        key's third read lately), so what is read again still comes to be held in
        memory.

        The location is looked for in `_places` first (one slot, found by the key's
        hash), then in the recency list (a lookup over every key), which teaches it
        to `_places`. A read found here does not move the key in the recency list
        (over 10^6 keys that costs as much as the lookup); it marks it (in its slot,
        else in the list), and eviction gives a marked key a second chance
        (`READ_AGAIN`, `_read_again`)."""
        places = self._places
        if places is None:
            return None  # no ring (or closed)
        # `ReadyPlaces.find`, written out: this runs on every disk hit
        key_hash = hash(key)
        slots = places.slots
        check = (key_hash >> CHECK_SHIFT) & CHECK_MASK
        index = key_hash & places.bucket_mask
        slot = slots[index]
        if slot & CHECK_MASK != check or not slot:
            index += 1
            slot = slots[index]
            if slot & CHECK_MASK != check:
                slot = 0
        if slot:
            if not self.memory.passes_by(key):
                # the memory tier would hold it (the key was read twice lately): read
                # through the index, which admits it
                return None
            found = self._read_ready((slot >> CHECK_BITS) & LOCATION_MASK, key, tag)
            if found is not None:
                self.places_found += 1
                if slot < READ_MARK:
                    slots[index] = slot | READ_MARK
                return found
            slots[index] = 0  # dead, overwritten or another key's: the list decides
        lru = self._lru
        value = lru.get(key)
        if value is None or value < READY_ONE:
            return None
        if not slot and not self.memory.passes_by(key):
            return None
        loc = value >> SIZE_BITS
        found = self._read_ready(loc, key, tag)
        if found is None:
            lru[key] = value & SIZE_MASK  # keeps its place in the recency list
            return None
        places.put(key_hash, loc, read=True)
        if not value & READ_AGAIN:
            lru[key] = value | READ_AGAIN  # the slot may go to another key
        return found

    def _read_ready(self, loc: int, key: str, tag: int) -> ReadyRecord | None:
        """The ready answer at `loc` if it is `key`'s, alive, whole and `tag`'s."""
        view = self._view
        if view is not None:
            found = parse_record_at(
                view,
                loc >> LENGTH_BITS,
                loc & LENGTH_MASK,
                key.encode("utf-8", "surrogateescape"),
                tag,
            )
        else:
            ring = self._disk.ring
            if ring is None:
                return None
            try:
                data = os.pread(ring.fd, loc & LENGTH_MASK, loc >> LENGTH_BITS)
            except OSError:
                return None
            found = parse_record(data, key.encode("utf-8", "surrogateescape"), tag)
        if found is None:
            self.ready_misses += 1
            return None
        self.ready_reads += 1
        return found

    def _ring_holds(self, loc: int, key: str) -> bool:
        """Whether the ring still holds `key`'s live record at `loc` (`ReadyRing.holds`);
        False without a ring, or when it cannot be read."""
        ring = self._disk.ring
        if ring is None:
            return False
        try:
            return ring.holds(loc, key)
        except OSError:
            return False

    def _read_again(self, key: str, value: int) -> bool:
        """Whether `key` was read since eviction last looked (its mark is taken)."""
        if value & READ_AGAIN:
            return True
        places = self._places
        return (
            places is not None
            and value >= READY_ONE
            and places.take_mark(hash(key), value >> SIZE_BITS)
        )

    def peek(self, key: str) -> StoredEntry | None:
        """The entry if it is in the memory tier; synchronous, no disk, no executor."""
        entry = self.memory.get(key)
        if entry is not None:
            self._touch(key)
        return entry

    async def get(self, key: str) -> StoredEntry | None:
        """The entry from the memory tier or else the index; promotes it into memory
        when the tier has room or the key was read before (`MemoryTier.admit`)."""
        deferred, self._deferred = self._deferred, None
        if (
            deferred is not None
            and deferred[0] == key
            and deferred[1] == self._version
            and time.monotonic() - deferred[2] < SYNC_INTERVAL
        ):
            # `get_now` just read this row (the hit lane, which left the answer to
            # the engine's lookup of the same request): not read a second time
            entry = self.peek(key)
            if entry is not None:
                return entry
            now: StoredEntry | Defer | None = deferred[3]
        else:
            now = self._get_now(key)
        if not isinstance(now, Defer):
            return now
        inline = now
        version, syncs = self._version, self.syncs
        self.gateway_loads += 1
        try:
            loaded = await self._run(self._disk.load, key, inline.record)
        except BodyCorrupt:
            self._version += 1
            self._account(key, None)
            self._corrupt(key)
            return None
        if loaded is None:
            if version == self._version and syncs == self.syncs and key in self._lru:
                self._account(key, None)  # removed by another process
            return None
        record, data = loaded
        entry = self._entry(key, record, data)
        if version == self._version:
            if key in self._lru:
                self._touch(key)
            else:  # stored by another process since we opened
                self._account(key, record.size)
            self.memory.admit(entry)
        return entry

    def get_now(self, key: str) -> StoredEntry | NotNow | None:
        """`get` without waiting: the entry from the memory tier, or read on the event
        loop (`disk_inline`), with `get`'s bookkeeping (recency, the memory tier's
        admission, syncs); `NOT_NOW` when only the gateway can read it (a large or
        uncached body, a key being changed, anything the gateway's reader decides)."""
        found = self._get_now(key)
        if isinstance(found, Defer):
            if found.record is not None:
                self._deferred = (key, self._version, time.monotonic(), found)
            return NOT_NOW
        if found is not None and not self.memory.holds(found):
            # read from disk and not admitted: if the caller leaves the answer to
            # `get` (stale, purged, a Vary index), it is not read again
            self._deferred = (key, self._version, time.monotonic(), found)
        return found

    def _get_now(self, key: str) -> StoredEntry | Defer | None:
        """`get_now`, with the row already read when the gateway must decide."""
        entry = self.peek(key)
        if entry is not None:
            return entry
        if key not in self._lru and self._known_absent(key):
            self.inline_loads += 1
            self.absent_known += 1
            return None
        inline = self._load_inline(key)
        if isinstance(inline, Defer):
            return inline
        self.inline_loads += 1
        if inline is None:
            if key in self._lru:
                self._account(key, None)  # removed by another process
            return None
        assert isinstance(inline, tuple)
        entry = self._entry(key, inline[0], inline[1])
        ready = inline[2]
        known = self._lru.get(key)
        if ready and known is not None and known < READY_ONE and not self._ring_holds(ready, key):
            # the location was forgotten here after its record failed, and the row
            # still names it: written over by the ring's wrap, learnt again, each
            # read would try it (and fail) before the index
            ready = 0
        if known is not None and not ready:
            self._touch(key)
        else:  # stored by another process since we opened, or has a ready answer
            self._account(key, inline[0].size, ready)
        self.memory.admit(entry)
        return entry

    def _known_absent(self, key: str) -> bool:
        """Whether `key`, not in the recency list, is absent as far as this process
        can know without a lookup: the list holds every key of the index as of the
        last sync (read at open, this process's own commits and deletes, and the
        rows other processes wrote up to the sync), and syncs when one is due.

        A key stored by another process since the last sync is absent here for at
        most `SYNC_INTERVAL`: one more upstream fetch at most, never a wrong answer
        (a key in the list is always looked up, so deletes and replacements are
        seen as before). A key being changed in this process, or a sync that cannot
        read the index here, leaves the decision to the lookup.
        """
        if key in self._locks or key in self._evicting_keys:
            return False
        now = time.monotonic()
        if now - self._synced_at < SYNC_INTERVAL:
            return True
        if now < self._inline_off_until or not self._sync(now):
            return False
        return key not in self._lru

    def _sync(self, now: float) -> bool:
        """Add the keys of rows written since the last sync (by any process) to the
        recency list with their bytes, so this process knows, and may evict, what the
        others store; whether it read them all (False: the index could not be read
        here, or more than `SYNC_ROWS` rows are new).

        Rows are read by row id: a new row's is above every earlier one's
        (`DiskIndex._keep_top`), and a replaced row keeps its id and its key, which
        the list already holds. A row missed all the same would only make its key
        absent here until this process stores it again: one more fetch.
        """
        rows = self._inline.rows_after(self._synced_rowid, SYNC_ROWS)
        if rows is None:
            return False
        self.syncs += 1
        lru = self._lru
        for _rowid, key, tag, ready in rows:
            if isinstance(key, str) and key not in lru:
                self._account(
                    key, tag if isinstance(tag, int) else 0, ready if isinstance(ready, int) else 0
                )
        if rows:
            self._synced_rowid = rows[-1][0]
        self._check_slow(now)
        if len(rows) == SYNC_ROWS:
            return False  # more to read: the next `get` reads on
        self._synced_at = now
        return True

    def _check_slow(self, started: float) -> None:
        """Turn the inline path off for `INLINE_PAUSE` after a read on the event loop
        that began at `started` took longer than `INLINE_SLOW` waiting on the device."""
        if time.monotonic() - started > INLINE_SLOW:
            # slow: a page of the index (or a directory) came from the device, or the
            # process was only descheduled (a busy machine); the thread's count of
            # faults and block reads tells which
            waited = _device_waits()
            if waited > self._device_waits:
                self._device_waits = waited
                self.inline_pauses += 1
                # leave disk reads to the gateway for a while rather than stall
                # every connection again
                self._inline_off_until = time.monotonic() + INLINE_PAUSE

    def _load_inline(self, key: str) -> object:
        """`InlineReader.load` of `key` on the event loop, or `DEFER`: while the path
        is off after a slow load, or when `key` is being changed in this process (a
        commit or delete waiting on the gateway decides what is there)."""
        if key in self._locks or key in self._evicting_keys:
            return DEFER
        now = time.monotonic()
        if now < self._inline_off_until:
            return DEFER
        loaded = self._inline.load(key)
        self._check_slow(now)
        return loaded

    async def put_meta(self, key: str, meta: object) -> None:
        """Store a metadata-only record, or replace the meta of an entry keeping its bodies."""
        async with self._key_lock(key):
            # the heads of its new ready answer, made here on the loop for the codings
            # it has (as the memory tier knows them, else those it most likely has:
            # the index keeps the record only if the row has just those)
            maker = self.ready_maker
            ready = None
            if maker is not None and self._lru.get(key):
                held = self.memory.get(key)
                codings = tuple(held.bodies) if held is not None else _likely_codings(meta)
                ready = maker(meta, codings, True)
            record, loc = await self._run(self._disk.put_meta, key, meta, ready)
            self._version += 1
            held = self.memory.get(key)
            if held is not None and held.bodies.keys() == {b[0] for b in record.bodies}:
                self.memory.put(replace(held, meta=meta))
            else:
                self.memory.put(self._entry(key, record, {}))
            self._account(key, record.size, loc)

    def begin(self, key: str, encoding: str = "identity", durable: bool = False) -> BodyWriter:
        """Start writing a body; nothing is visible until `BodyWriter.commit`, which
        with `durable` returns once the body and its row are on stable storage."""
        if self._closed:
            raise StoreError("store is closed")
        return BodyWriter(
            self,
            key,
            encoding,
            self.tmp_path("." + encoding),
            self.memory_object_max,
            durable=durable,
        )

    def _ready_record(self, writer: BodyWriter, meta: object, data: bytes | None) -> bytes | None:
        """The ready answer of the object `writer` stores, if a maker is set and it is
        small, identity and one the maker answers for."""
        maker = self.ready_maker
        if (
            maker is None
            or data is None
            or writer.encoding != "identity"
            or len(data) > READY_BODY_MAX
            or len(data) != writer.written
        ):
            return None
        head = maker(meta, ("identity",), False)
        return encode_record(writer.key, head, meta, {"identity": data}) if head else None

    async def _commit_body(
        self, writer: BodyWriter, meta: object, data: bytes | None, whole: bytes | None
    ) -> StoredEntry:
        ready = self._ready_record(writer, meta, data if data is not None else whole)
        async with self._key_lock(writer.key):
            record, _old, loc = await self._install(
                Install(
                    writer.key,
                    writer.path,
                    writer.encoding,
                    meta,
                    writer.written,
                    writer.checksum,
                    whole,
                    durable=writer.durable,
                    ready=ready,
                )
            )
            self._version += 1
            if whole is not None:
                self.commits_in_place += 1
            entry = self._entry(
                writer.key, record, {writer.encoding: data} if data is not None else {}
            )
            self.memory.put(entry)
            self._account(writer.key, record.size, loc)
        await self._evict(keep=writer.key)
        return entry

    async def _install(self, item: Install) -> tuple[_Record, _Record | None, int]:
        """Index a finished body, batched with every other commit ready meanwhile.

        The first commit starts the committer task; commits arriving while it waits
        for the gateway join the next batch, so under load one index transaction
        carries many commits (`DiskIndex.install_many`) and a lone commit waits for
        nothing but its own.
        """
        result: tuple[_Record, _Record | None, int] = await self._batched(item)
        return result

    async def _batched(self, item: Install | AddVariants) -> Any:
        """`item` done by the committer with every other one ready meanwhile: its
        result, or its error raised (`StoreError`)."""
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._pending.append((item, done))
        if self._committer is None:
            self._committer = loop.create_task(self._commit_batches())
        return await done

    async def _commit_batches(self) -> None:
        """The committer: index what is pending, one transaction per batch (two when
        it holds both commits and variants)."""
        batch: list[tuple[Install | AddVariants, asyncio.Future[Any]]] = []
        try:
            while self._pending:
                if self.commit_inline:
                    await asyncio.sleep(0)  # commits made in this turn join the batch
                batch, self._pending = self._pending, []
                # installs first, as `_commit_many` answers them
                batch.sort(key=lambda pair: isinstance(pair[0], AddVariants))
                installs = [i for i, _ in batch if isinstance(i, Install)]
                adds = [i for i, _ in batch if isinstance(i, AddVariants)]
                if installs:
                    self.commit_batches += 1
                    self.commits += len(installs)
                if adds:
                    self.variant_batches += 1
                try:
                    if self.commit_inline:
                        done_by_item = self._commit_now(installs, adds)
                    else:
                        done_by_item = await self._run(self._commit_many, installs, adds)
                except Exception as exc:
                    for _item, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for (item, done), result in zip(batch, done_by_item, strict=True):
                    if done.done():
                        continue  # its waiter was cancelled; the row is in place
                    if isinstance(result, OSError):
                        done.set_exception(StoreError(f"commit {item.key!r}: {result}"))
                    else:
                        done.set_result(result)
        finally:
            self._committer = None
            for _item, done in batch + self._pending:
                if not done.done():
                    done.set_exception(StoreError("store is closing"))
            self._pending = []

    def _commit_many(self, installs: list[Install], adds: list[AddVariants]) -> list[Any]:
        """`DiskIndex.install_many` of `installs` and `add_variants_many` of `adds`:
        the results in the order of the two lists, installs first."""
        results: list[Any] = self._disk.install_many(installs) if installs else []
        if adds:
            results += self._disk.add_variants_many(adds)
        return results

    def _commit_now(self, installs: list[Install], adds: list[AddVariants]) -> list[Any]:
        """`_commit_many` on the event loop, its storage errors as the gateway's
        (`StoreError`)."""
        try:
            return self._commit_many(installs, adds)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise StoreError(f"commit: {exc}") from exc

    async def add_encoding(self, key: str, encoding: str, src_path: str) -> BodyRef | None:
        """Move `src_path` in as another encoding of `key`; None (and the file removed) if gone."""
        added = await self.add_encodings(key, {encoding: src_path})
        return added[encoding] if added is not None else None

    async def add_encodings(
        self, key: str, paths: Mapping[str, str | bytes], made_from: BodyRef | None = None
    ) -> dict[str, BodyRef] | None:
        """Move the files of `paths` in as `key`'s bodies in their codings, in one
        transaction that also writes the object's ready answer in all its codings
        (its variants are all made: `paths` may be empty when none was worth
        keeping); None (and the files removed) if the object is gone, or no longer
        has the body `made_from` the files were made from."""
        async with self._key_lock(key):
            maker = self.ready_maker
            ready = None
            if maker is not None:
                held = self.memory.get(key)
                if held is not None:
                    meta, have = held.meta, tuple(held.bodies)
                else:  # left the memory tier meanwhile: its row says
                    row = await self._run(self._disk.row, key)
                    meta, have = (row.meta, row.codings) if row is not None else (None, ())
                if meta is not None:
                    ready = maker(meta, (*have, *(c for c in paths if c not in have)), True)
            source = (
                (made_from.encoding, made_from.size, made_from.checksum)
                if made_from is not None
                else None
            )
            added = await self._batched(AddVariants(key, paths, ready, source))
            self._version += 1
            if added is None:
                self.memory.discard(key)
                self._account(key, None)
                return None
            record, new_data, loc = added
            held = self.memory.get(key)
            data: dict[str, bytes] = {}
            if held is not None:
                data = {e: r.data for e, r in held.bodies.items() if r.data is not None}
            for encoding in paths:
                data.pop(encoding, None)
            data.update(new_data)
            entry = self._entry(key, record, data)
            self.memory.put(entry)
            self._account(key, record.size, loc)
        await self._evict(keep=key)
        return {encoding: entry.bodies[encoding] for encoding in paths}

    async def delete(self, key: str) -> None:
        """Remove an entry and its bodies; no error if absent."""
        async with self._key_lock(key):
            self.memory.discard(key)
            self._account(key, None)
            self._version += 1
            await self._run(self._disk.delete, [key])

    async def drop_corrupt(self, key: str, body: BodyRef) -> None:
        """Drop the object whose `body` failed its checksum (if it still has that body).

        Only a file body can fail while it is read: a body without a path (kept in
        its row, or held in memory) was checked when it was loaded."""
        if body.path is None:
            return
        async with self._key_lock(key):
            dropped = await self._run(self._disk.drop_body, key, body.path)
            self._version += 1
            self.memory.discard(key)
            if dropped:
                self._account(key, None)
        if dropped:
            self._corrupt(key)

    async def scrub(self, key: str, rate: int) -> int:
        """Re-read every body of `key` at about `rate` bytes/s, checking checksums;
        drops the object on a mismatch (or a short file). Returns the bytes read.

        Each object counts as at least `SCRUB_OBJECT_MIN` bytes against the rate: for
        small objects the cost is per object (an index row, an open, a read and a
        close on the gateway), not per byte; at 8 MiB/s of 1 KiB bodies the scrubber
        made about 30,000 gateway calls a second on a store of 10^6 objects.
        """
        started = time.monotonic()
        done = await self._scrub(key, rate)
        await asyncio.sleep(max(0.0, SCRUB_OBJECT_MIN / rate - (time.monotonic() - started)))
        return done

    async def _scrub(self, key: str, rate: int) -> int:
        """The row and every body of at most `SCRUB_CHUNK` bytes are read and checked in
        one step (`_scrub_small`; on the loop for a store in memory, else one gateway
        call): a store of small objects is mostly that, and five hops per object
        (row, open, two preads, close) were the cost."""
        if self.commit_inline:
            # in memory (tmpfs): read on the loop, as commits are. On the gateway, each
            # read handed the GIL back and forth with the loop at every SQLite call:
            # over 10^6 objects, where the scrubber never rests, about 13,000 futex
            # calls a second under load and 3-6 µs of system time on every request
            # (docs/benchmarks.md, "The scrubber on the loop")
            checked = self._scrub_now(key)
        else:
            checked = await self._run(_scrub_small, self._disk, key)
        if checked is None:
            return 0
        record, done, bad = checked
        if done:
            await asyncio.sleep(done / rate)
        for _encoding, place, size, checksum in record.bodies:
            if bad or checksum is None or size <= SCRUB_CHUNK or not isinstance(place, str):
                continue
            path = self._disk.abs_path(place)
            hasher = xxhash.xxh3_64()
            try:
                fd = await self._run(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
            except StoreError:
                continue  # gone (replaced or deleted meanwhile): nothing to check
            try:
                pos = 0
                while True:
                    chunk = await self._run(os.pread, fd, SCRUB_CHUNK, pos)
                    if not chunk:
                        break
                    hasher.update(chunk)
                    pos += len(chunk)
                    done += len(chunk)
                    await asyncio.sleep(len(chunk) / rate)
            finally:
                await self._run(os.close, fd)
            bad = pos != size or hasher.intdigest() != checksum
        if bad:
            async with self._key_lock(key):
                dropped = await self._run(self._disk.drop_if_same, key, record)
                self._version += 1
                self.memory.discard(key)
                if dropped:
                    self._account(key, None)
            if dropped:
                self._corrupt(key)
        return done

    def _scrub_now(self, key: str) -> tuple[_Record, int, bool] | None:
        """`_scrub_small` on the event loop, its storage errors as the gateway's
        (`StoreError`)."""
        try:
            return _scrub_small(self._disk, key)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise StoreError(f"scrub {key!r}: {exc}") from exc

    async def keys(self) -> list[str]:
        """All keys in the index (a full scan)."""
        return await self._run(self._disk.keys)

    async def keys_page(self, after: int, limit: int) -> tuple[list[str], int]:
        """Up to `limit` keys stored after the cursor `after` (a row id), and the next."""
        return await self._run(self._disk.keys_page, after, limit)

    async def keys_of(self, bases: list[str], separator: str, limit: int) -> list[str]:
        """The keys stored that are one of `bases` or start with one and `separator`,
        up to `limit` (`DiskIndex.keys_of`)."""
        return await self._run(self._disk.keys_of, bases, separator, limit)

    async def metas(self, keys: list[str]) -> list[tuple[str, object]]:
        """The metadata of `keys` that exist, without promoting them into memory."""
        return await self._run(self._disk.metas, keys)

    def _evicting_bytes(self) -> int:
        return self._disk.evicting

    async def _evict(self, keep: str) -> None:
        victims = self._choose_victims(keep)
        if not victims:
            return
        freed = sum(size for _key, size in victims)
        # until the delete changes the byte total, it still counts these: commits
        # choosing meanwhile subtract them, or a burst of commits would each evict
        # the same excess again (the delete takes them off as it lowers the total)
        self._disk.evicting += freed
        self._version += 1
        keys = [key for key, _size in victims]
        for key in keys:
            self.memory.discard(key)
        self._evicting_keys.update(keys)
        # shielded: a cancelled caller must not cancel the delete before it runs,
        # or the bytes it was to take off `evicting` would stay there
        deleting = asyncio.ensure_future(self._run(self._disk.delete, keys, freed))
        deleting.add_done_callback(lambda _done: self._evicting_keys.difference_update(keys))
        await asyncio.shield(deleting)

    async def close(self) -> None:
        """Close the index and release the temp directory."""
        if self._closed:
            return
        self._closed = True
        self._view = None  # before the ring is closed, off the event loop
        if self._committer is not None:
            await asyncio.shield(self._committer)
        self._inline.close()
        await self._run(self._disk.close)
        places, self._places = self._places, None
        if places is not None:
            places.close()


def _scrub_small(disk: DiskIndex, key: str) -> tuple[_Record, int, bool] | None:
    """The row of `key`, the bytes read of its bodies of at most `SCRUB_CHUNK`, and
    whether one of them failed its checksum or length (None without a row); blocks.
    A body kept in the row is checked from the row. A file gone meanwhile (replaced
    or deleted) is not a failure."""
    record = disk.row(key)
    if record is None:
        return None
    done = 0
    for _encoding, place, size, checksum in record.bodies:
        if checksum is None or size > SCRUB_CHUNK:
            continue
        if isinstance(place, bytes):
            body = place
        else:
            try:
                body = _read_small(disk.abs_path(place), size)
            except FileNotFoundError:
                continue
        done += len(body)
        if len(body) != size or body_checksum(body) != checksum:
            return record, done, True
    return record, done, False


def _likely_codings(meta: object) -> tuple[str, ...]:
    """The codings a stored object most likely has when the memory tier does not
    say: br and gzip beside identity for a compressible one (`ObjectMeta`)."""
    if getattr(meta, "compressible", False):
        return ("identity", "br", "gzip")
    return ("identity",)
