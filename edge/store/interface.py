"""The store's seam: what the engine and the background tasks see of storage.

A stored object is a key, the engine's metadata (opaque here: any picklable value)
and zero or more bodies, one per content coding ("identity", "gzip", "br"), each
with the checksum taken while it was written. `ObjectStore` is the protocol that
`DiskStore` (production) and `MemoryStore` (tests) implement; one contract suite
(tests/edge/test_store.py) runs against both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import xxhash

if TYPE_CHECKING:
    from edge.store.writer import BodyWriter

__all__ = [
    "NOT_NOW",
    "BodyCorrupt",
    "BodyGone",
    "BodyRef",
    "KiB",
    "MiB",
    "NotNow",
    "ObjectStore",
    "StoreError",
    "StoredEntry",
    "body_checksum",
]

KiB = 1024
MiB = 1024 * KiB


class StoreError(Exception):
    """A storage operation failed (disk full, I/O error, index unavailable)."""


class BodyGone(StoreError):
    """A body file vanished or is shorter than recorded (evicted, replaced, damaged).

    Raised by `read_body` before it yields anything wrong: the caller treats the
    object as not cached.
    """


class BodyCorrupt(BodyGone):
    """A stored body's bytes differ from the checksum taken while it was written."""


def body_checksum(data: bytes) -> int:
    """The checksum kept per stored body: xxh3-64 (docs/benchmarks.md: about 10 µs a
    MiB here, against 140 µs for zlib.crc32 and 730 µs for blake2b; 64 bits, so a
    damaged body passes with odds of 2**-64; it guards against the disk, not an
    attacker, who would need write access to the cache directory anyway)."""
    return xxhash.xxh3_64_intdigest(data)


@dataclass(frozen=True, slots=True)
class BodyRef:
    """One stored representation (encoding) of an object's body.

    At least one of `data` and `path` is set. Readers use `data` when it is set (the
    body is held in the memory tier) and otherwise read or sendfile `path`; `read_body`
    does exactly that. `MemoryStore` sets only `data`.
    """

    encoding: str
    size: int
    data: bytes | None
    path: str | None
    #: `body_checksum` of the bytes, taken as they were written (None: not known)
    checksum: int | None = None


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An object as stored: its metadata and its bodies by encoding.

    `bodies` is empty for a metadata-only record (e.g. the Vary index of a URL).
    """

    key: str
    meta: object
    bodies: Mapping[str, BodyRef]

    @property
    def total_size(self) -> int:
        """Bytes of all bodies together."""
        return sum(ref.size for ref in self.bodies.values())


class NotNow:
    """What `ObjectStore.get_now` answers when it cannot answer without waiting: only
    `get` can (a read on the I/O gateway)."""

    __slots__ = ()


#: the one `NotNow`
NOT_NOW = NotNow()


class ObjectStore(Protocol):
    """The seam between the engine and storage; `DiskStore` and `MemoryStore` implement it."""

    #: the bound on body bytes held
    max_bytes: int
    #: called with the key of an object dropped because a body failed its checksum
    on_corrupt: Callable[[str], None] | None

    @property
    def size_bytes(self) -> int:
        """Bytes of body data currently held."""
        ...

    def peek(self, key: str) -> StoredEntry | None:
        """The entry if it is in the memory tier; synchronous, no disk, no executor."""
        ...

    async def get(self, key: str) -> StoredEntry | None:
        """The entry from the memory tier or else the index; promotes it into memory."""
        ...

    def get_now(self, key: str) -> StoredEntry | NotNow | None:
        """What `get` would answer, when it can be answered without waiting (the
        memory tier, or a small object read on the calling thread); `NOT_NOW` when
        only `get` can answer. The same bookkeeping as `get`."""
        ...

    async def put_meta(self, key: str, meta: object) -> None:
        """Store a metadata-only record, or replace the meta of an entry keeping its bodies."""
        ...

    def begin(self, key: str, encoding: str = "identity", durable: bool = False) -> BodyWriter:
        """Start writing a body; nothing is visible until `BodyWriter.commit`, which
        with `durable` returns once the object is on stable storage."""
        ...

    async def add_encoding(self, key: str, encoding: str, src_path: str) -> BodyRef | None:
        """Move a finished file in as another encoding of an entry; None if the entry is gone."""
        ...

    async def add_encodings(
        self, key: str, paths: Mapping[str, str | bytes], made_from: BodyRef | None = None
    ) -> dict[str, BodyRef] | None:
        """Move finished files in as an entry's bodies in their codings (`paths`: coding
        to file), all at once, when the entry has every coding it will get (a store
        that keeps ready answers makes the one for all its codings then); None (and
        the files removed) if the entry is gone, or no longer has the body
        `made_from` that the files were made from (replaced meanwhile: they are
        another object's variants)."""
        ...

    def tmp_path(self, suffix: str = "") -> str:
        """A fresh path in the store's temp directory (same filesystem as the bodies)."""
        ...

    def forget_cached(self, key: str) -> None:
        """Drop `key` from the memory tier, so the next `get` reads the index."""
        ...

    async def delete(self, key: str) -> None:
        """Remove an entry and its bodies; no error if absent."""
        ...

    async def drop_corrupt(self, key: str, body: BodyRef) -> None:
        """Drop the object whose `body` failed its checksum (if it still has that body)."""
        ...

    async def scrub(self, key: str, rate: int) -> int:
        """Re-read every body of `key` at about `rate` bytes/s, checking checksums;
        drops the object on a mismatch. Returns the bytes read."""
        ...

    async def keys(self) -> list[str]:
        """All keys, for background scans (may be slow)."""
        ...

    async def keys_page(self, after: int, limit: int) -> tuple[list[str], int]:
        """Up to `limit` keys stored after the cursor `after` (0: from the start), and
        the cursor to pass next; no keys when the scan is done. For scans that must
        not hold every key at once (a list of 10^6 keys takes about 85 MiB)."""
        ...

    async def keys_of(self, bases: list[str], separator: str, limit: int) -> list[str]:
        """The keys stored that are one of `bases` or start with one and `separator`
        (its variants' keys), up to `limit` in all; costs what matches, not what is
        stored."""
        ...

    async def metas(self, keys: list[str]) -> list[tuple[str, object]]:
        """The metadata of `keys` that exist, read without promoting anything into
        the memory tier (for background scans, which must not evict hot entries)."""
        ...

    async def close(self) -> None:
        """Finish background work and release resources."""
        ...
