"""What `DiskStore` and `MemoryStore` share: blocking calls through the I/O gateway
with their errors made ours, per-key locks, recency and byte accounting, and the
choice of eviction victims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import diskcache

from edge.store import io
from edge.store.interface import StoredEntry, StoreError

if TYPE_CHECKING:
    from edge.store.writer import BodyWriter

__all__ = ["READ_AGAIN", "SECOND_CHANCES", "SIZE_BITS", "SIZE_MASK", "StoreBase"]

T = TypeVar("T")

#: bits of a recency-list value below what a store may keep above them
#: (`DiskStore`: where its ready answer is, `edge.store.ready`): the object's size,
#: and the top one `READ_AGAIN`
SIZE_BITS = 40
SIZE_MASK = (1 << (SIZE_BITS - 1)) - 1
#: set in a recency-list value by a read that did not move the key to the most
#: recently used end (a ready answer's: `DiskStore.ready_answer`, where the move
#: costs as much as the lookup over a large store); eviction gives such a key a
#: second chance (moves it there then, and clears the bit), as CLOCK does
READ_AGAIN = 1 << (SIZE_BITS - 1)
#: keys one eviction walk gives a second chance at most; past that it takes the
#: least recently used keys whether read again or not, so that one walk stays
#: bounded when every key was read since the last
SECOND_CHANCES = 4096

log = logging.getLogger("edge.store")


class StoreBase:
    """What both stores share: gateway calls, per-key locks and LRU accounting."""

    def __init__(self, max_bytes: int, tmp_dir: str) -> None:
        self.max_bytes = max_bytes
        self._tmp_dir = tmp_dir
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        #: key -> bytes of its bodies, least recently used first
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        #: bytes of victims chosen but not yet deleted from the index (a disk store
        #: deletes on the gateway; commits choosing meanwhile must not choose again)
        self._evicting = 0
        #: bumped by every change to the index, so a read that raced a change does
        #: not put what it read into the memory tier
        self._version = 0
        self._closed = False
        #: called with the key of an object dropped because a body failed its checksum
        self.on_corrupt: Callable[[str], None] | None = None
        #: objects dropped so far because a body failed its checksum
        self.corrupt_found = 0

    def _corrupt(self, key: str) -> None:
        self.corrupt_found += 1
        log.error("object %r dropped: a stored body fails its checksum", key)
        if self.on_corrupt is not None:
            self.on_corrupt(key)

    @property
    def size_bytes(self) -> int:
        """Bytes of body data currently held."""
        return self._bytes

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call on the I/O gateway, its storage errors as `StoreError`."""
        try:
            return await io.run(fn, *args)
        except StoreError:
            raise
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise StoreError(f"{getattr(fn, '__name__', fn)}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: str) -> AsyncIterator[None]:
        """Serialise changes to one key within this process."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def forget_cached(self, key: str) -> None:
        """Drop `key` from the memory tier (none here), so `get` reads the index."""

    def tmp_path(self, suffix: str = "") -> str:
        """A fresh path in the store's temp directory (same filesystem as the bodies)."""
        return os.path.join(self._tmp_dir, f"{random.getrandbits(128):032x}{suffix}")

    def _account(self, key: str, size: int | None) -> None:
        """Record the body bytes of a key (None: the key is gone), most recent last."""
        old = self._lru.pop(key, None)
        if old is not None:
            self._bytes -= old
        if size is not None:
            self._lru[key] = size
            self._bytes += size

    def _touch(self, key: str) -> None:
        if key in self._lru:
            self._lru.move_to_end(key)

    def _read_again(self, key: str, value: int) -> bool:
        """Whether `key` (its recency-list `value`) was read since eviction last looked
        without being moved (`READ_AGAIN`); a store that keeps the mark elsewhere too
        takes it from there."""
        return bool(value & READ_AGAIN)

    def _evicting_bytes(self) -> int:
        """Bytes of victims chosen whose removal the byte total does not show yet."""
        return self._evicting

    def _pick_victims(self, keep: str) -> list[str]:
        """Least recently used keys to drop until the bytes fit `max_bytes`."""
        return [key for key, _size in self._choose_victims(keep)]

    def _choose_victims(self, keep: str) -> list[tuple[str, int]]:
        """(key, bytes) of the least recently used keys to drop until the bytes fit
        `max_bytes`, less what is already being evicted; forgotten here.

        O(victims + keys skipped), never O(keys stored): the walk starts at the least
        recently used end and stops as soon as enough is freed, and nothing is copied
        when nothing needs to go (the common case of a commit).
        """
        excess = self.size_bytes - self._evicting_bytes() - self.max_bytes
        if excess <= 0:
            return []
        victims: list[tuple[str, int]] = []
        spared: list[tuple[str, int]] = []
        freed = 0
        lru = self._lru
        for key, value in lru.items():
            if freed >= excess:
                break
            if key == keep or key in self._locks:
                continue  # just stored, or being changed right now
            if len(spared) < SECOND_CHANCES and self._read_again(key, value):
                spared.append((key, value & ~READ_AGAIN))
                continue
            size = value & SIZE_MASK
            victims.append((key, size))
            freed += size
        for key, value in spared:
            lru[key] = value
            lru.move_to_end(key)
        for key, _size in victims:
            self._account(key, None)
        return victims

    async def _commit_body(
        self, writer: BodyWriter, meta: object, data: bytes | None, whole: bytes | None
    ) -> StoredEntry:
        """Index `writer`'s body under its key (`data`: a copy for the memory tier;
        `whole`: the body when none of it is in the file yet, to be written in place)."""
        raise NotImplementedError
