"""The object store: metadata in a diskcache index, bodies as our own files.

This is the only module of the edge that touches disk. A stored object is a key, the
engine's metadata (opaque here: any picklable value) and zero or more bodies, one per
content coding ("identity", "gzip", "br").

Layout of a `DiskStore` directory::

    index/          the diskcache index: key -> (meta, ((encoding, relative path, size), ...))
    bodies/ab/cd/   body files, named by a random id so that a replaced body never
                    overwrites a file a reader still has open
    tmp/<owner>/    bodies being written, one sub-directory per open store, held by an
                    flock on `<owner>/.lock`; a directory whose lock is free belongs to a
                    dead process and is removed when a store opens

Why a fill is never visible unless complete: the body is written to tmp/, closed,
renamed into bodies/, and only then is the index row written. A process killed at any
point before the row leaves at most a temp file (removed at the next open) or an
unreferenced body file (removed by the orphan sweep at open). An index row whose
file has gone is treated as absent and deleted when read.

Two tiers: a bounded in-memory LRU holds metadata and small bodies, so `peek` answers a
hot hit with neither disk nor executor; everything else runs off the event loop in one
place, `DiskStore._run`, on a small dedicated thread pool.

diskcache runs with eviction disabled: its least-recently-used policy writes to SQLite
on every read (perf-notes: 166 µs against 24 µs per get), so the store keeps its own
recency in memory and its own byte count of the body files, and evicts when a commit
takes it over `max_bytes`. Worker processes may share a directory: the byte total is
a counter in the index, changed in the same transaction as the rows, so it is right
across processes and crashes; recency is each process's own (what it stored, read or
found at open), so with several workers eviction is close to LRU, not exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pickle
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import diskcache
import xxhash

__all__ = [
    "BodyCorrupt",
    "BodyGone",
    "BodyRef",
    "BodyWriter",
    "DiskStore",
    "MemoryStore",
    "ObjectStore",
    "StoreError",
    "StoredEntry",
    "body_checksum",
    "read_body",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

#: bytes gathered before one write syscall (small upstream chunks are batched)
WRITE_BATCH = 64 * KiB
#: the longest buffered bytes wait before they reach the file, so readers tailing a
#: slow fill still see data promptly
WRITE_DELAY = 0.005
#: accounting overhead of one entry in the memory tier besides its body bytes
ENTRY_OVERHEAD = 512
#: an unreferenced body file younger than this may belong to another process that
#: renamed it and is about to write its index row; the orphan sweep leaves it alone
ORPHAN_GRACE = 600.0
#: bytes the scrubber reads per step (it sleeps between steps to keep to its rate)
SCRUB_CHUNK = 1 * MiB
#: the index key of the byte total of all bodies (not a str, so never an object's key)
BYTES_KEY = ("edgeshield", "body-bytes")


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

    async def put_meta(self, key: str, meta: object) -> None:
        """Store a metadata-only record, or replace the meta of an entry keeping its bodies."""
        ...

    def begin(self, key: str, encoding: str = "identity") -> BodyWriter:
        """Start writing a body; nothing is visible until `BodyWriter.commit`."""
        ...

    async def add_encoding(self, key: str, encoding: str, src_path: str) -> BodyRef | None:
        """Move a finished file in as another encoding of an entry; None if the entry is gone."""
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

    async def metas(self, keys: list[str]) -> list[tuple[str, object]]:
        """The metadata of `keys` that exist, read without promoting anything into
        the memory tier (for background scans, which must not evict hot entries)."""
        ...

    async def close(self) -> None:
        """Finish background work and release resources."""
        ...


# --------------------------------------------------------------------------- writing


class BodyWriter:
    """Writes one body to a temp file; `commit` makes it visible, `abort` discards it.

    Chunks are gathered up to `WRITE_BATCH` bytes (or `WRITE_DELAY` seconds) before a
    write syscall, which runs off the event loop. `written` counts bytes already in the
    file at `path`, so a reader may tail the file up to `written` while it grows; the
    file exists once `written > 0`. `wait_written(n)` waits until more than `n` bytes
    are there or the writer is finished. An open file stays readable after `commit`
    (the file is renamed) and after `abort` (it is unlinked).
    """

    def __init__(
        self,
        store: _StoreBase,
        key: str,
        encoding: str,
        path: str,
        keep_limit: int,
    ) -> None:
        self.key = key
        self.encoding = encoding
        self.path = path
        #: bytes in the file
        self.written = 0
        #: bytes accepted by write() (some may still be buffered)
        self.received = 0
        #: true once committed or aborted
        self.finished = False
        self._store = store
        self._buf = bytearray()
        self._fd: int | None = None
        self._io_lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._background: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        # a copy of the body while it stays within keep_limit (the memory tier)
        self._keep_limit = keep_limit
        self._kept: bytearray | None = bytearray() if keep_limit > 0 else None
        # fed on the store's threads, one batch at a time under _io_lock
        self._hasher = xxhash.xxh3_64()

    @property
    def checksum(self) -> int:
        """`body_checksum` of the bytes in the file so far."""
        return self._hasher.intdigest()

    async def write(self, chunk: bytes) -> None:
        """Append a chunk; waits for the disk only when a full batch is gathered."""
        self._check_open()
        if not chunk:
            return
        self._buf += chunk
        self.received += len(chunk)
        if self._kept is not None:
            if len(self._kept) + len(chunk) <= self._keep_limit:
                self._kept += chunk
            else:
                self._kept = None
        if len(self._buf) >= WRITE_BATCH:
            await self._drain()
        elif self._timer is None and self._background is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(WRITE_DELAY, self._flush_later)

    async def flush(self) -> None:
        """Write what is buffered now (readers tailing the file then see it)."""
        self._check_open()
        await self._drain()

    async def wait_written(self, offset: int) -> int:
        """Wait until more than `offset` bytes are in the file or the writer is finished.

        Returns `written`. Raises `StoreError` if writing failed.
        """
        while self.written <= offset and not self.finished:
            if self._error is not None:
                raise StoreError(f"writing {self.key!r} failed") from self._error
            self._changed.clear()
            await self._changed.wait()
        return self.written

    async def commit(self, meta: object) -> StoredEntry:
        """Complete the body and index it under the key, replacing any older entry."""
        self._check_open()
        await self._drain()
        await self._close_file()
        self.finished = True
        self._notify()
        data = bytes(self._kept) if self._kept is not None else None
        try:
            return await self._store._commit_body(self, meta, data)
        except BaseException:
            await self._store._run(_unlink_quietly, self.path)
            raise

    async def abort(self) -> None:
        """Discard the body: the temp file is removed and nothing is indexed. Idempotent."""
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        if self._background is not None:
            with contextlib.suppress(BaseException):
                await self._background
        self._kept = None
        self._buf.clear()
        await self._close_file()
        await self._store._run(_unlink_quietly, self.path)
        self._notify()

    # internals

    def _check_open(self) -> None:
        if self.finished:
            raise StoreError(f"writer for {self.key!r} is already finished")
        if self._error is not None:
            raise StoreError(f"writing {self.key!r} failed: {self._error}") from self._error

    def _notify(self) -> None:
        self._changed.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush_later(self) -> None:
        self._timer = None
        if self._background is None and not self.finished:
            self._background = asyncio.get_running_loop().create_task(self._background_drain())

    async def _background_drain(self) -> None:
        try:
            await self._drain()
        except StoreError:
            pass  # kept in self._error, raised by the next write or commit
        finally:
            self._background = None

    async def _drain(self) -> None:
        self._cancel_timer()
        async with self._io_lock:
            if self._error is not None:
                raise StoreError(f"writing {self.key!r} failed: {self._error}") from self._error
            if not self._buf and self._fd is not None:
                return
            data = bytes(self._buf)
            self._buf.clear()
            try:
                self._fd = await self._store._run(_append, self._fd, self.path, data, self._hasher)
            except BaseException as exc:
                self._error = exc
                self._notify()
                raise
            self.written += len(data)
            self._notify()

    async def _close_file(self) -> None:
        async with self._io_lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                await asyncio.shield(self._store._run(os.close, fd))


def _append(fd: int | None, path: str, data: bytes, hasher: xxhash.xxh3_64) -> int:
    """Write all of `data` to `fd` (opening `path` first when `fd` is None), and
    add it to the body's checksum."""
    hasher.update(data)
    if fd is None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    return fd


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --------------------------------------------------------------------------- reading

_reader_pool: ThreadPoolExecutor | None = None


def _readers() -> ThreadPoolExecutor:
    global _reader_pool
    if _reader_pool is None:
        _reader_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="edge-body-read")
    return _reader_pool


def _open_at(path: str, start: int, n: int) -> tuple[int, bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, os.pread(fd, n, start)
    except BaseException:
        os.close(fd)
        raise


async def read_body(
    ref: BodyRef,
    start: int = 0,
    end: int | None = None,
    chunk_size: int = 256 * KiB,
    executor: Executor | None = None,
) -> AsyncIterator[bytes]:
    """Yield the bytes [start, end) of a body (end exclusive, None: to the end).

    From `ref.data` when set, else from `ref.path` with every file call off the event
    loop. Raises `BodyGone` if the file is missing or shorter than `ref.size`, before
    yielding the bytes it lacks, so a truncated body is never passed on as whole; a
    whole body read from its file is checked against `ref.checksum`, its last chunk
    held back until the check passes (`BodyCorrupt` instead).
    """
    stop = ref.size if end is None else min(end, ref.size)
    if start >= stop:
        return
    if ref.data is not None:
        if start == 0 and stop == len(ref.data) and stop <= chunk_size:
            yield ref.data
            return
        view = memoryview(ref.data)
        for pos in range(start, stop, chunk_size):
            yield bytes(view[pos : min(pos + chunk_size, stop)])
        return
    if ref.path is None:
        raise BodyGone("body has neither data nor path")
    chunks = _read_file(ref, start, stop, chunk_size, executor)
    if start == 0 and stop == ref.size:
        chunks = _checked(chunks, ref)
    async for chunk in chunks:
        yield chunk


async def _checked(chunks: AsyncIterator[bytes], ref: BodyRef) -> AsyncIterator[bytes]:
    """The chunks of a whole body, the last one held back until the checksum of all
    of them matches `ref.checksum`; BodyCorrupt if it does not (nothing to check
    when the checksum is not known)."""
    if ref.checksum is None:
        async for chunk in chunks:
            yield chunk
        return
    hasher = xxhash.xxh3_64()
    pending: bytes | None = None
    async for chunk in chunks:
        hasher.update(chunk)
        if pending is not None:
            yield pending
        pending = chunk
    if hasher.intdigest() != ref.checksum:
        raise BodyCorrupt(f"body file {ref.path} fails its checksum")
    if pending is not None:
        yield pending


async def _read_file(
    ref: BodyRef, start: int, stop: int, chunk_size: int, executor: Executor | None
) -> AsyncIterator[bytes]:
    assert ref.path is not None
    loop = asyncio.get_running_loop()
    pool = executor or _readers()
    want = min(chunk_size, stop - start)
    try:
        fd, chunk = await loop.run_in_executor(pool, _open_at, ref.path, start, want)
    except FileNotFoundError as exc:
        raise BodyGone(f"body file {ref.path} is gone") from exc
    except OSError as exc:
        raise StoreError(f"reading {ref.path}: {exc}") from exc
    try:
        pos = start
        while True:
            if not chunk:
                raise BodyGone(f"body file {ref.path} ends at {pos}, expected {stop}")
            pos += len(chunk)
            yield chunk
            if pos >= stop:
                return
            try:
                chunk = await loop.run_in_executor(
                    pool, os.pread, fd, min(chunk_size, stop - pos), pos
                )
            except OSError as exc:
                raise StoreError(f"reading {ref.path}: {exc}") from exc
    finally:
        # the close survives a cancelled reader (the client went away)
        await asyncio.shield(loop.run_in_executor(pool, os.close, fd))


class OpenBody:
    """A body file opened before a response starts, read by offset off the loop.

    Opening first means a body replaced or evicted after this point stays readable
    (files are only ever unlinked, never rewritten), and a body already gone is
    known before any header has left.
    """

    def __init__(self, fd: int, ref: BodyRef) -> None:
        self._fd = fd
        self.ref = ref

    async def chunks(self, start: int, end: int, chunk_size: int) -> AsyncIterator[bytes]:
        """The bytes [start, end), in chunks; BodyGone if the file is shorter.

        The whole body is checked against its checksum (see `read_body`): the last
        chunk comes only once the check passes, BodyCorrupt instead.
        """
        chunks = self._chunks(start, end, chunk_size)
        if start == 0 and end == self.ref.size:
            chunks = _checked(chunks, self.ref)
        async for chunk in chunks:
            yield chunk

    async def _chunks(self, start: int, end: int, chunk_size: int) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        pool = _readers()
        pos = start
        while pos < end:
            chunk = await loop.run_in_executor(
                pool, os.pread, self._fd, min(chunk_size, end - pos), pos
            )
            if not chunk:
                raise BodyGone(f"body file {self.ref.path} ends at {pos}, expected {end}")
            pos += len(chunk)
            yield chunk

    async def close(self) -> None:
        """Close the file (shielded: survives a cancelled reader)."""
        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(_readers(), os.close, self._fd))


async def open_body(ref: BodyRef) -> OpenBody:
    """Open a stored body file; BodyGone if it is not there any more."""
    if ref.path is None:
        raise BodyGone("body has no file")
    loop = asyncio.get_running_loop()
    try:
        fd = await loop.run_in_executor(_readers(), os.open, ref.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise BodyGone(f"body file {ref.path} is gone") from exc
    return OpenBody(fd, ref)


# --------------------------------------------------------------------------- tiers


class MemoryTier:
    """A bounded LRU of entries kept in memory: metadata, and bodies when small."""

    def __init__(self, max_bytes: int, ttl: float = float("inf")) -> None:
        self.max_bytes = max_bytes
        #: seconds an entry is trusted before it is read from the index again
        self.ttl = ttl
        self.used = 0
        self._entries: OrderedDict[str, tuple[StoredEntry, int, float]] = OrderedDict()

    def get(self, key: str) -> StoredEntry | None:
        """The entry, marked most recently used; None once it is older than `ttl`."""
        item = self._entries.get(key)
        if item is None:
            return None
        if item[2] < time.monotonic():
            self.discard(key)
            return None
        self._entries.move_to_end(key)
        return item[0]

    def put(self, entry: StoredEntry) -> None:
        """Hold an entry, evicting the least recently used ones beyond the bound."""
        cost = ENTRY_OVERHEAD + sum(
            len(ref.data) for ref in entry.bodies.values() if ref.data is not None
        )
        self.discard(entry.key)
        if cost > self.max_bytes:
            return
        self._entries[entry.key] = (entry, cost, time.monotonic() + self.ttl)
        self.used += cost
        while self.used > self.max_bytes:
            _, (_, old_cost, _) = self._entries.popitem(last=False)
            self.used -= old_cost

    def discard(self, key: str) -> None:
        """Forget a key."""
        item = self._entries.pop(key, None)
        if item is not None:
            self.used -= item[1]

    def __len__(self) -> int:
        return len(self._entries)


class _StoreBase:
    """What both stores share: the executor helper, per-key locks and LRU accounting."""

    def __init__(self, max_bytes: int, tmp_dir: str, io_threads: int) -> None:
        self.max_bytes = max_bytes
        self._tmp_dir = tmp_dir
        self._executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="edge-store")
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        #: key -> bytes of its bodies, least recently used first
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
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
        """Run a blocking call on the store's threads; the one place I/O leaves the loop."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
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
        return os.path.join(self._tmp_dir, uuid.uuid4().hex + suffix)

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

    def _pick_victims(self, keep: str) -> list[str]:
        """Least recently used keys to drop until the bytes fit `max_bytes`."""
        victims: list[str] = []
        excess = self._bytes - self.max_bytes
        freed = 0
        for key, size in list(self._lru.items()):
            if freed >= excess:
                break
            if key == keep or key in self._locks:
                continue  # just stored, or being changed right now
            victims.append(key)
            freed += size
            self._account(key, None)
        return victims

    async def _commit_body(
        self, writer: BodyWriter, meta: object, data: bytes | None
    ) -> StoredEntry:
        raise NotImplementedError


# --------------------------------------------------------------------------- disk


@dataclass(frozen=True, slots=True)
class _Record:
    """An index row as stored by diskcache (pickled)."""

    meta: object
    # (encoding, path relative to the store directory, size, checksum or None); rows
    # written before checksums have 3-tuples, read as "not known" (see `_row`)
    bodies: tuple[tuple[str, str, int, int | None], ...] = field(default=())

    def with_body(self, encoding: str, rel: str, size: int, checksum: int | None) -> _Record:
        others = tuple(b for b in self.bodies if b[0] != encoding)
        return _Record(self.meta, (*others, (encoding, rel, size, checksum)))

    @property
    def size(self) -> int:
        return sum(b[2] for b in self.bodies)


class DiskStore(_StoreBase):
    """The production store: a diskcache index and body files under one directory.

    Open it with `store = await DiskStore.open(directory, max_bytes)`; opening cleans
    temp files of dead writers, sweeps unreferenced body files and counts the bytes
    of what is stored (all off the event loop). Close it with `await store.close()`.
    """

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        memory_bytes: int = 64 * MiB,
        memory_object_max: int = 256 * KiB,
        io_threads: int = 4,
        memory_ttl: float = 2.0,
    ) -> None:
        """Not usable until opened; use `DiskStore.open`."""
        self.directory = os.path.abspath(directory)
        owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        super().__init__(max_bytes, os.path.join(self.directory, "tmp", owner), io_threads)
        self.memory = MemoryTier(memory_bytes, memory_ttl)
        self.memory_object_max = memory_object_max
        self._index: diskcache.Cache | None = None
        self._lock_fd: int | None = None

    @classmethod
    async def open(
        cls,
        directory: str,
        max_bytes: int,
        memory_bytes: int = 64 * MiB,
        memory_object_max: int = 256 * KiB,
        io_threads: int = 4,
        memory_ttl: float = 2.0,
    ) -> DiskStore:
        """Open (creating if needed) the store in `directory`.

        `memory_ttl` bounds how long the memory tier trusts an entry before reading the
        index again: worker processes sharing the directory see each other's deletes
        and replacements within that time (one disk read per hot key per period).
        """
        store = cls(directory, max_bytes, memory_bytes, memory_object_max, io_threads, memory_ttl)
        try:
            sizes = await store._run(store._start_sync)
        except BaseException:
            store._executor.shutdown(wait=False)
            raise
        for key, size in sizes:
            store._account(key, size)
        victims = store._pick_victims(keep="")
        if victims:
            await store._run(store._delete_sync, victims)
        return store

    def _account(self, key: str, size: int | None) -> None:
        """Recency only: the byte total is the shared counter that `_count` keeps."""
        self._lru.pop(key, None)
        if size is not None:
            self._lru[key] = size

    # -- blocking parts, run on the store's threads

    def _start_sync(self) -> list[tuple[str, int]]:
        tmp_root = os.path.dirname(self._tmp_dir)
        os.makedirs(os.path.join(self.directory, "bodies"), exist_ok=True)
        os.makedirs(tmp_root, exist_ok=True)
        _remove_dead_tmp_dirs(tmp_root)
        os.makedirs(self._tmp_dir)
        self._lock_fd = os.open(
            os.path.join(self._tmp_dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._index = diskcache.Cache(
            os.path.join(self.directory, "index"),
            eviction_policy="none",
            size_limit=2**62,
            cull_limit=0,
            statistics=0,
            tag_index=0,
        )
        sizes: list[tuple[str, int]] = []
        referenced: set[str] = set()
        for key in self._index.iterkeys():
            if not isinstance(key, str):
                continue
            record = self._row(key)
            if record is None:
                continue
            sizes.append((key, record.size))
            referenced.update(body[1] for body in record.bodies)
        self._sweep_orphans(referenced)
        with self._index.transact():
            if self._index.get(BYTES_KEY) is None:  # a new directory
                self._index.set(BYTES_KEY, sum(size for _, size in sizes))
            self._count(0)
        return sizes

    def _row(self, key: str) -> _Record | None:
        """The index row of `key`; a row that no longer unpickles (its metadata class
        changed in an upgrade) is deleted and treated as absent, its files left to the
        orphan sweep."""
        try:
            value = self.index.get(key)
        except (pickle.UnpicklingError, AttributeError, ImportError, EOFError, TypeError) as exc:
            log.warning("dropping unreadable index row %r: %s", key, exc)
            self.index.delete(key)
            return None
        if not isinstance(value, _Record):
            return None
        if any(len(body) == 3 for body in value.bodies):
            bodies = tuple((*body[:3], None) for body in value.bodies)
            return _Record(value.meta, bodies)  # type: ignore[arg-type]
        return value

    def _count(self, delta: int) -> None:
        """Change the shared byte total (inside the caller's transaction) and note it."""
        self._bytes = int(self.index.incr(BYTES_KEY, delta, default=0))

    def _sweep_orphans(self, referenced: set[str]) -> None:
        """Remove body files no index row names (left by a crash between rename and row)."""
        bodies = os.path.join(self.directory, "bodies")
        cutoff = time.time() - ORPHAN_GRACE
        for dirpath, _dirs, files in os.walk(bodies):
            for name in files:
                full = os.path.join(dirpath, name)
                if os.path.relpath(full, self.directory) in referenced:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(full).st_mtime < cutoff:
                        os.unlink(full)

    @property
    def index(self) -> diskcache.Cache:
        """The diskcache index (open)."""
        if self._index is None:
            raise StoreError("store is not open")
        return self._index

    def _new_body_path(self, encoding: str) -> tuple[str, str]:
        """A fresh (relative, absolute) body path in a sharded directory."""
        name = uuid.uuid4().hex
        rel = os.path.join("bodies", name[:2], name[2:4], f"{name}.{encoding}")
        full = os.path.join(self.directory, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return rel, full

    def _abs(self, rel: str) -> str:
        return os.path.join(self.directory, rel)

    def _remove_files(self, record: _Record | None, keep: frozenset[str] = frozenset()) -> None:
        if record is None:
            return
        for body in record.bodies:
            rel = body[1]
            if rel not in keep:
                _unlink_quietly(self._abs(rel))

    def _install_sync(
        self, key: str, src: str, encoding: str, meta: object, size: int, checksum: int
    ) -> tuple[_Record, _Record | None]:
        """Rename a finished body into place, then write its row (the commit point)."""
        rel, full = self._new_body_path(encoding)
        os.rename(src, full)
        record = _Record(meta, ((encoding, rel, size, checksum),))
        try:
            with self.index.transact():
                old = self._row(key)
                self.index.set(key, record)
                self._count(size - (old.size if old is not None else 0))
        except BaseException:
            _unlink_quietly(full)
            raise
        self._remove_files(old)
        return record, old

    def _add_encoding_sync(
        self, key: str, encoding: str, src: str
    ) -> tuple[_Record, bytes | None] | None:
        size = os.stat(src).st_size
        data = None
        hasher = xxhash.xxh3_64()
        with open(src, "rb") as f:
            if size <= self.memory_object_max:  # small: the memory tier keeps a copy
                data = f.read()
                hasher.update(data)
            else:
                while chunk := f.read(MiB):
                    hasher.update(chunk)
        with self.index.transact():
            old = self._row(key)
            if old is None:
                _unlink_quietly(src)
                return None
            rel, full = self._new_body_path(encoding)
            os.rename(src, full)
            record = old.with_body(encoding, rel, size, hasher.intdigest())
            self.index.set(key, record)
            self._count(record.size - old.size)
        for body in old.bodies:
            if body[0] == encoding:
                _unlink_quietly(self._abs(body[1]))
        return record, data

    def _put_meta_sync(self, key: str, meta: object) -> _Record:
        with self.index.transact():
            old = self._row(key)
            bodies = old.bodies if old is not None else ()
            record = _Record(meta, bodies)
            self.index.set(key, record)
        return record

    def _delete_sync(self, keys: list[str]) -> None:
        for key in keys:
            with self.index.transact():
                old = self._row(key)
                if old is None:
                    continue
                self.index.delete(key)
                self._count(-old.size)
            self._remove_files(old)

    def _load_sync(self, key: str) -> tuple[_Record, dict[str, bytes]] | None:
        """Read a row, check its files exist, and read small bodies for the memory tier."""
        record = self._row(key)
        if record is None:
            return None
        data: dict[str, bytes] = {}
        for encoding, rel, size, checksum in record.bodies:
            full = self._abs(rel)
            try:
                if size <= self.memory_object_max:
                    with open(full, "rb") as f:
                        body = f.read(size + 1)
                    if len(body) != size:
                        raise FileNotFoundError(full)
                    if checksum is not None and body_checksum(body) != checksum:
                        # never into the memory tier: the object goes, all its codings
                        if self._drop_if_same(key, record):
                            raise BodyCorrupt(f"body file {full} fails its checksum")
                        return None
                    data[encoding] = body
                elif os.stat(full).st_size != size:
                    raise FileNotFoundError(full)
            except FileNotFoundError:
                # the row names a missing or damaged file: the entry is absent
                self._drop_if_same(key, record)
                return None
        return record, data

    def _drop_if_same(self, key: str, record: _Record) -> bool:
        """Delete `key` if its row still names the bodies of `record`; whether it did."""
        with self.index.transact():
            current = self._row(key)
            if current is None or current.bodies != record.bodies:
                return False  # changed meanwhile: not ours to drop
            self.index.delete(key)
            self._count(-current.size)
        self._remove_files(record)
        return True

    def _drop_body_sync(self, key: str, path: str) -> bool:
        """Delete `key` if one of its bodies is still the file `path`."""
        record = self._row(key)
        if record is None or all(self._abs(body[1]) != path for body in record.bodies):
            return False
        return self._drop_if_same(key, record)

    def _keys_sync(self) -> list[str]:
        return [k for k in self.index.iterkeys() if isinstance(k, str)]

    def _close_sync(self) -> None:
        if self._index is not None:
            self._index.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        shutil.rmtree(self._tmp_dir, ignore_errors=True)

    # -- the interface

    def _entry(self, key: str, record: _Record, data: Mapping[str, bytes]) -> StoredEntry:
        bodies = {
            enc: BodyRef(enc, size, data.get(enc), self._abs(rel), checksum)
            for enc, rel, size, checksum in record.bodies
        }
        return StoredEntry(key, record.meta, bodies)

    def forget_cached(self, key: str) -> None:
        """Drop `key` from the memory tier, so the next `get` reads the index."""
        self.memory.discard(key)

    def peek(self, key: str) -> StoredEntry | None:
        """The entry if it is in the memory tier; synchronous, no disk, no executor."""
        entry = self.memory.get(key)
        if entry is not None:
            self._touch(key)
        return entry

    async def get(self, key: str) -> StoredEntry | None:
        """The entry from the memory tier or else the index; promotes it into memory."""
        entry = self.peek(key)
        if entry is not None:
            return entry
        version = self._version
        try:
            loaded = await self._run(self._load_sync, key)
        except BodyCorrupt:
            self._version += 1
            self._account(key, None)
            self._corrupt(key)
            return None
        if loaded is None:
            if version == self._version and key in self._lru:
                self._account(key, None)  # removed by another process
            return None
        record, data = loaded
        entry = self._entry(key, record, data)
        if version == self._version:
            if key in self._lru:
                self._touch(key)
            else:  # stored by another process since we opened
                self._account(key, record.size)
            self.memory.put(entry)
        return entry

    async def put_meta(self, key: str, meta: object) -> None:
        """Store a metadata-only record, or replace the meta of an entry keeping its bodies."""
        async with self._key_lock(key):
            record = await self._run(self._put_meta_sync, key, meta)
            self._version += 1
            held = self.memory.get(key)
            if held is not None and held.bodies.keys() == {b[0] for b in record.bodies}:
                self.memory.put(replace(held, meta=meta))
            else:
                self.memory.put(self._entry(key, record, {}))
            self._account(key, record.size)

    def begin(self, key: str, encoding: str = "identity") -> BodyWriter:
        """Start writing a body; nothing is visible until `BodyWriter.commit`."""
        if self._closed:
            raise StoreError("store is closed")
        return BodyWriter(
            self, key, encoding, self.tmp_path("." + encoding), self.memory_object_max
        )

    async def _commit_body(
        self, writer: BodyWriter, meta: object, data: bytes | None
    ) -> StoredEntry:
        async with self._key_lock(writer.key):
            record, _old = await self._run(
                self._install_sync,
                writer.key,
                writer.path,
                writer.encoding,
                meta,
                writer.written,
                writer.checksum,
            )
            self._version += 1
            entry = self._entry(
                writer.key, record, {writer.encoding: data} if data is not None else {}
            )
            self.memory.put(entry)
            self._account(writer.key, record.size)
        await self._evict(keep=writer.key)
        return entry

    async def add_encoding(self, key: str, encoding: str, src_path: str) -> BodyRef | None:
        """Move `src_path` in as another encoding of `key`; None (and the file removed) if gone."""
        async with self._key_lock(key):
            added = await self._run(self._add_encoding_sync, key, encoding, src_path)
            self._version += 1
            if added is None:
                self.memory.discard(key)
                self._account(key, None)
                return None
            record, new_data = added
            held = self.memory.get(key)
            data: dict[str, bytes] = {}
            if held is not None:
                data = {e: r.data for e, r in held.bodies.items() if r.data is not None}
            data.pop(encoding, None)
            if new_data is not None:
                data[encoding] = new_data
            entry = self._entry(key, record, data)
            self.memory.put(entry)
            self._account(key, record.size)
        await self._evict(keep=key)
        return entry.bodies[encoding]

    async def delete(self, key: str) -> None:
        """Remove an entry and its bodies; no error if absent."""
        async with self._key_lock(key):
            self.memory.discard(key)
            self._account(key, None)
            self._version += 1
            await self._run(self._delete_sync, [key])

    async def drop_corrupt(self, key: str, body: BodyRef) -> None:
        """Drop the object whose `body` failed its checksum (if it still has that body)."""
        if body.path is None:
            return
        async with self._key_lock(key):
            dropped = await self._run(self._drop_body_sync, key, body.path)
            self._version += 1
            self.memory.discard(key)
            if dropped:
                self._account(key, None)
        if dropped:
            self._corrupt(key)

    async def scrub(self, key: str, rate: int) -> int:
        """Re-read every body of `key` at about `rate` bytes/s, checking checksums;
        drops the object on a mismatch (or a short file). Returns the bytes read."""
        record = await self._run(self._row, key)
        if record is None:
            return 0
        done = 0
        for _encoding, rel, size, checksum in record.bodies:
            if checksum is None:
                continue
            path = self._abs(rel)
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
            if pos != size or hasher.intdigest() != checksum:
                async with self._key_lock(key):
                    dropped = await self._run(self._drop_if_same, key, record)
                    self._version += 1
                    self.memory.discard(key)
                    if dropped:
                        self._account(key, None)
                if dropped:
                    self._corrupt(key)
                break
        return done

    async def keys(self) -> list[str]:
        """All keys in the index (a full scan)."""
        return await self._run(self._keys_sync)

    async def metas(self, keys: list[str]) -> list[tuple[str, object]]:
        """The metadata of `keys` that exist, without promoting them into memory."""

        def read() -> list[tuple[str, object]]:
            found = []
            for key in keys:
                record = self._row(key)
                if record is not None:
                    found.append((key, record.meta))
            return found

        return await self._run(read)

    async def _evict(self, keep: str) -> None:
        victims = self._pick_victims(keep)
        if not victims:
            return
        self._version += 1
        for key in victims:
            self.memory.discard(key)
        await self._run(self._delete_sync, victims)

    async def close(self) -> None:
        """Wait for background work, close the index and release the temp directory."""
        if self._closed:
            return
        self._closed = True
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)


def _remove_dead_tmp_dirs(tmp_root: str) -> None:
    """Remove temp directories whose owning store is gone (its flock is free)."""
    for name in os.listdir(tmp_root):
        path = os.path.join(tmp_root, name)
        if not os.path.isdir(path):
            _unlink_quietly(path)
            continue
        try:
            fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            shutil.rmtree(path, ignore_errors=True)  # its owner died before locking
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live store owns it
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- memory


class MemoryStore(_StoreBase):
    """The same interface with every body in memory, for tests and small nodes.

    BodyRefs it returns have `data` set and `path` None: readers use `read_body` or
    `data`, never the path. Writers and `tmp_path` still use a private temp directory
    (so `compress.py` works unchanged); `add_encoding` reads the file in and removes it.
    """

    def __init__(self, max_bytes: int, tmp_dir: str | None = None) -> None:
        """A store bounded to `max_bytes` of body data."""
        directory = tempfile.mkdtemp(prefix="edge-memstore-", dir=tmp_dir)
        super().__init__(max_bytes, directory, io_threads=2)
        self._entries: dict[str, StoredEntry] = {}

    def peek(self, key: str) -> StoredEntry | None:
        """The entry; everything here is in memory."""
        entry = self._entries.get(key)
        if entry is not None:
            self._touch(key)
        return entry

    async def get(self, key: str) -> StoredEntry | None:
        """The same as `peek`."""
        return self.peek(key)

    async def put_meta(self, key: str, meta: object) -> None:
        """Store a metadata-only record, or replace the meta of an entry keeping its bodies."""
        old = self._entries.get(key)
        self._entries[key] = StoredEntry(key, meta, old.bodies if old is not None else {})
        self._account(key, old.total_size if old is not None else 0)

    def begin(self, key: str, encoding: str = "identity") -> BodyWriter:
        """Start writing a body (kept whole in memory, mirrored in a temp file)."""
        if self._closed:
            raise StoreError("store is closed")
        return BodyWriter(self, key, encoding, self.tmp_path("." + encoding), keep_limit=2**62)

    async def _commit_body(
        self, writer: BodyWriter, meta: object, data: bytes | None
    ) -> StoredEntry:
        await self._run(_unlink_quietly, writer.path)
        body = data or b""
        entry = StoredEntry(
            writer.key, meta, {writer.encoding: BodyRef(writer.encoding, len(body), body, None)}
        )
        self._entries[writer.key] = entry
        self._account(writer.key, len(body))
        self._evict(keep=writer.key)
        return entry

    async def add_encoding(self, key: str, encoding: str, src_path: str) -> BodyRef | None:
        """Read `src_path` in as another encoding of `key` and remove it; None if gone."""
        body = await self._run(_read_and_unlink, src_path)
        old = self._entries.get(key)
        if old is None:
            return None
        ref = BodyRef(encoding, len(body), body, None)
        bodies = {**old.bodies, encoding: ref}
        self._entries[key] = StoredEntry(key, old.meta, bodies)
        self._account(key, sum(r.size for r in bodies.values()))
        self._evict(keep=key)
        return ref

    async def delete(self, key: str) -> None:
        """Remove an entry; no error if absent."""
        self._entries.pop(key, None)
        self._account(key, None)

    async def drop_corrupt(self, key: str, body: BodyRef) -> None:
        """Bodies here never touch disk, so never fail a checksum: drop if still held."""
        entry = self._entries.get(key)
        if entry is not None and body in entry.bodies.values():
            await self.delete(key)
            self._corrupt(key)

    async def scrub(self, key: str, rate: int) -> int:
        """Nothing to re-read: bodies here are only in memory."""
        return 0

    async def keys(self) -> list[str]:
        """All keys."""
        return list(self._entries)

    async def metas(self, keys: list[str]) -> list[tuple[str, object]]:
        """The metadata of `keys` that exist."""
        return [(key, self._entries[key].meta) for key in keys if key in self._entries]

    def _evict(self, keep: str) -> None:
        for key in self._pick_victims(keep):
            self._entries.pop(key, None)

    async def close(self) -> None:
        """Drop everything and remove the temp directory."""
        if self._closed:
            return
        self._closed = True
        self._entries.clear()
        await self._run(shutil.rmtree, self._tmp_dir, True)
        self._executor.shutdown(wait=True)


def _read_and_unlink(path: str) -> bytes:
    with open(path, "rb") as f:
        body = f.read()
    os.unlink(path)
    return body
