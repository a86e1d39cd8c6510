"""A disk hit of a small object read on the event loop, without the I/O gateway.

A hit on an object outside the memory tier used to cost a hop to the gateway's
threads (a thread wake-up, and the event loop waiting for the GIL behind eight
threads: with 32 clients a uniform load over 10^5 objects ran at a sixth of the
hot-set rate while the loop sat idle 40% of the time), one diskcache lookup, an
unpickled row and an open+read+close of the body. nginx does the same work (a key
lookup in memory, an open and a read of the file) in its worker, with no hop.

`InlineReader.load` does the lookup and the read here, on the calling thread,
when it can be sure none of it waits on a disk:

- the index row is read with a plain SELECT on a connection of its own that never
  waits for a lock (`timeout=0`; a WAL reader is refused only while the database
  recovers): refused or failed, the caller goes to the gateway;
- a body kept in the index row (at most `ROW_BODY_MAX`, edge/store/disk_layout.py)
  comes with the row: no file is opened, its checksum is checked here;
- every other body of the object is at most `INLINE_BODY_MAX` bytes and is read with
  `preadv2(RWF_NOWAIT)`, which answers only from the page cache: a body that is not
  there (EAGAIN) is read on the gateway. A filesystem without RWF_NOWAIT is read
  here only when it is memory-backed (tmpfs, ramfs), where every read is from
  memory; on any other, the inline path is off;
- anything unusual (no file, a short or long file, a checksum that fails, a row
  stored outside the table) is left to the gateway's `DiskIndex.load`, which is the
  one place that drops damaged objects: the inline path only ever serves an object
  whose body matched its checksum, and never changes the index.

Reading the index row may take a page of the index from disk when it is not
cached (the index of 10^6 small objects is about 200 MiB; a serving node keeps it
in the page cache). `DiskStore` measures each inline load and turns the path off
for a while after a slow one (`INLINE_SLOW`), so a cold disk costs the loop one
slow read, not one per hit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import sqlite3
import time

from edge.store.disk_layout import _Record, decode_row
from edge.store.interface import KiB, body_checksum

__all__ = [
    "INLINE_BODY_MAX",
    "INLINE_PAUSE",
    "INLINE_SLOW",
    "Defer",
    "InlineReader",
    "memory_backed",
    "read_mode",
]

#: the largest body a disk hit reads on the event loop (a read of 64 KiB from the
#: page cache takes a few µs; larger bodies are read, or streamed, on the gateway)
INLINE_BODY_MAX = 64 * KiB
#: an inline load slower than this (seconds) turns the inline path off for a while
INLINE_SLOW = 0.002
#: how long (seconds) the inline path stays off after a slow load
INLINE_PAUSE = 5.0

#: bytes of the index the inline reader's connection maps: none. A lookup in an
#: index of 10^5 rows costs the same with a 64 MiB map (diskcache's own) or none
#: (8.5 against 8.7 µs of CPU), but the first read after another connection has
#: committed, which under misses is nearly every read, cost twice as much with
#: the map: 35-45 against 18-19 µs for a key, 73-95 against 35 µs for the newest
#: rows (`DiskStore._sync`) (docs/benchmarks.md, "Absent keys without a lookup")
INDEX_MAP = 0
#: diskcache's mode of a pickled value (`diskcache.core.MODE_PICKLE`), and of bytes
#: kept as they are (`MODE_RAW`: a row `disk_layout.encode_row` wrote)
_MODE_PICKLE = 4
_MODE_RAW = 1
_SELECT = (
    "SELECT mode, value, access_count FROM Cache WHERE key = ? AND raw = 1"
    " AND (expire_time IS NULL OR expire_time > ?)"
)
_SELECT_AFTER = (
    "SELECT rowid, key, tag, access_count FROM Cache WHERE rowid > ? AND raw = 1"
    " ORDER BY rowid LIMIT ?"
)
#: filesystems whose reads never wait on a device
_MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


class Defer:
    """ "Go to the gateway": what `InlineReader.load` returns when it cannot decide
    here, with the row it read if it got that far (so the gateway need not read it
    again for an object with a large body)."""

    __slots__ = ("record",)

    def __init__(self, record: _Record | None = None) -> None:
        self.record = record


#: `Defer` without a row
DEFER = Defer()


def _filesystem(path: str) -> str:
    """The type of the filesystem `path` is on, from /proc/self/mounts ("" if unknown)."""
    path = os.path.realpath(path)
    best, kind = "", ""
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 3:
                continue
            point = parts[1].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, parts[2]
    return kind


def memory_backed(directory: str) -> bool:
    """Whether `directory` is on a filesystem kept in memory (tmpfs), where no read
    or write ever waits on a device. Blocks: run it on the gateway, once."""
    return _filesystem(directory) in _MEMORY_FILESYSTEMS


def read_mode(directory: str) -> str:
    """How bodies under `directory` may be read inline: "nowait" (the filesystem
    honours RWF_NOWAIT), "plain" (memory-backed, every read is from memory) or
    "off" (neither: every disk hit goes to the gateway). Blocks: run it on the
    gateway, once, when the store opens."""
    if not hasattr(os, "RWF_NOWAIT"):
        return "off"
    probe = os.path.join(directory, f".nowait-probe-{os.getpid()}")
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, b"x")
        try:
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            return "nowait"  # supported; the byte was just not cached
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            return "plain" if _filesystem(directory) in _MEMORY_FILESYSTEMS else "off"
        return "nowait"
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)


class InlineReader:
    """Index rows and small bodies of one store directory, read on the event loop.

    Used from one thread only (the event loop's): the connection is its own.
    """

    def __init__(self, directory: str, mode: str, body_max: int = INLINE_BODY_MAX) -> None:
        self.directory = directory
        #: "nowait", "plain" or "off" (see `read_mode`)
        self.mode = mode
        #: bodies larger than this send the load to the gateway (at most
        #: `INLINE_BODY_MAX`, and no larger than what the memory tier holds)
        self.body_max = min(body_max, INLINE_BODY_MAX)
        self._db: sqlite3.Connection | None = None
        #: rows looked up (`load`)
        self.lookups = 0

    def _connection(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            db = sqlite3.connect(
                os.path.join(self.directory, "index", "cache.db"),
                timeout=0,
                isolation_level=None,
                check_same_thread=False,  # closed from the gateway at shutdown
            )
            db.execute("PRAGMA query_only = 1")
            # no map (`INDEX_MAP`), and 2 MiB of pages of its own (a lookup in an
            # index of 10^6 rows took 7-9 µs with any of a 64 MiB or 1 GiB map or
            # none, and a cache of 64 or 2,000 pages)
            db.execute(f"PRAGMA mmap_size = {INDEX_MAP}")
            db.execute("PRAGMA cache_size = -2048")
            self._db = db
        return db

    def load(self, key: str) -> object:
        """(row, bodies read from files, location of its ready answer or 0) of `key`
        when every body is small, cached and sound (a body kept in the row is in the
        row, not in the second item); None when the index has no row for it;
        `DEFER` when the gateway must decide."""
        if self.mode == "off":
            return DEFER
        self.lookups += 1
        try:
            found = self._connection().execute(_SELECT, (key, time.time())).fetchone()
        except sqlite3.Error:
            return DEFER  # busy (recovering) or damaged: the gateway's reader decides
        if found is None:
            return None
        mode, value, ready = found
        if mode == _MODE_RAW and value is not None:
            record = decode_row(value)  # a row in the plain-tuple format (`encode_row`)
            if record is None:
                return DEFER  # unreadable: `DiskIndex.row` drops it
        elif mode != _MODE_PICKLE or value is None:
            return DEFER
        else:
            try:
                record = pickle.loads(value)
            except Exception:
                return DEFER  # unreadable: `DiskIndex.row` drops it
            if not isinstance(record, _Record):
                return None
        data: dict[str, bytes] = {}
        for body in record.bodies:
            if len(body) != 4:
                return DEFER  # a row of an earlier release: `DiskIndex.row` reads it
            encoding, place, size, checksum = body
            if isinstance(place, bytes):
                if len(place) != size or checksum is None or body_checksum(place) != checksum:
                    return Defer(record)  # damaged: `DiskIndex.load` drops and counts it
                continue
            if size > self.body_max or checksum is None:
                return Defer(record)
            read = self._read(os.path.join(self.directory, place), size)
            if read is None or body_checksum(read) != checksum:
                return Defer(record)  # missing, short, long, not cached or damaged
            data[encoding] = read
        return record, data, ready if isinstance(ready, int) else 0

    def rows_after(self, rowid: int, limit: int) -> list[tuple[int, object, object, object]] | None:
        """(rowid, key, tag, ready answer's location) of the first `limit` object
        rows with a row id above `rowid`, in row id order (`DiskStore._sync`); None
        when the index cannot be read here now (busy, damaged, or the inline path is
        off on this filesystem): the caller then knows nothing new."""
        if self.mode == "off":
            return None
        try:
            rows: list[tuple[int, object, object, object]] = (
                self._connection().execute(_SELECT_AFTER, (rowid, limit)).fetchall()
            )
        except sqlite3.Error:
            return None
        return rows

    def _read(self, path: str, size: int) -> bytes | None:
        """The whole file if it is `size` bytes and (mode "nowait") in the page cache."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if self.mode == "nowait":
                buf = bytearray(size + 1)  # one byte more shows a file longer than its row
                got = os.preadv(fd, [buf], 0, os.RWF_NOWAIT)
                return bytes(buf[:size]) if got == size else None
            data = os.pread(fd, size + 1, 0)
            return data if len(data) == size else None
        except OSError:
            return None  # EAGAIN: not in the page cache
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            self._db.close()
            self._db = None
