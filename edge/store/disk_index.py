"""The blocking half of `DiskStore`: the diskcache index and the body files.

Every method here blocks and runs on the I/O gateway (`edge.store.io`), called by
`DiskStore`, which keeps the memory tier, recency and per-key locks on the event
loop. The split follows diskcache's own (file mechanics apart from policy).

Layout of a store directory::

    index/          the diskcache index: key -> _Record(meta, ((encoding, place,
                    size, checksum), ...)), and the byte total of all bodies; a body
                    of at most `ROW_BODY_MAX` bytes is kept in its row (place: the
                    bytes), a larger one is a file (place: its relative path)
    bodies/ab/cd/   body files, named by a random id so that a replaced body never
                    overwrites a file a reader still has open
    tmp/<owner>/    bodies being written, one sub-directory per open store, held by an
                    flock on `<owner>/.lock`; a directory whose lock is free belongs to a
                    dead process and is removed when a store opens

Why a fill is never visible unless complete: a body kept in its row is written by
the row's own transaction; a larger one is written to tmp/, closed, renamed into
bodies/, and only then is the index row written. A process killed at any
point before the row leaves at most a temp file (removed at the next open) or an
unreferenced body file (removed by the orphan sweep at open). An index row whose
file has gone is treated as absent and deleted when read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pickle
import random
import shutil
import threading
import time
from collections.abc import Iterator, Sequence

import diskcache
import xxhash
from diskcache.core import MODE_RAW

from edge.store.base import SIZE_BITS, SIZE_MASK
from edge.store.disk_layout import (
    BYTES_KEY,
    ORPHAN_GRACE,
    ROW_BODY_MAX,
    ROW_MAX,
    AddVariants,
    Install,
    _Record,
    decode_row,
    encode_row,
    remove_dead_tmp_dirs,
    sweep_orphans,
    sync_path,
    write_new,
)
from edge.store.interface import BodyCorrupt, MiB, StoreError, body_checksum
from edge.store.ready import READY_BODY_MAX, ReadyHead, ReadyRing, encode_record, ring_capacity
from edge.store.writer import unlink_quietly

__all__ = ["BYTES_KEY", "ORPHAN_GRACE", "ROW_BODY_MAX", "DiskIndex", "Install", "_Record"]

#: an object's row and how it is kept (`DiskIndex._put_row`)
_SELECT_ROW = (
    "SELECT rowid, mode, filename, value, access_count FROM Cache WHERE key = ? AND raw = 1"
)
#: where an object's ready answer is (`edge.store.ready`): diskcache's
#: `access_count`, which nothing else uses with its eviction off (0: none)
_SELECT_READY = "SELECT access_count FROM Cache WHERE key = ? AND raw = 1"
_SET_READY = "UPDATE Cache SET access_count = ? WHERE key = ? AND raw = 1"

#: a new object row, with the columns diskcache's `set` gives one (no expiry, read
#: never, kept in the row)
_INSERT_ROW = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
    " tag, size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, ?, ?, 0, ?, NULL, ?)"
)
_UPDATE_ROW = (
    "UPDATE Cache SET store_time = ?, expire_time = NULL, access_time = ?, access_count = ?,"
    " tag = ?, size = 0, mode = ?, filename = NULL, value = ? WHERE rowid = ?"
)

log = logging.getLogger("edge.store")

#: pages of its own cache each connection to the index may hold (SQLite's
#: `cache_size`; diskcache's default is 8,192 pages, 32 MiB, per connection, and
#: every gateway thread has a connection: with a large index they held up to
#: 256 MiB between them). Reads go through the index's memory map, which the
#: kernel's page cache backs, so a small cache of its own costs a read nothing
INDEX_CACHE_PAGES = 256


class DiskIndex:
    """The index and body files of one store directory; every method blocks.

    `start` opens (or creates) the directory; `close` releases it. `bytes` is the
    shared byte total of all bodies as last read or changed by this process.
    """

    def __init__(
        self,
        directory: str,
        tmp_dir: str,
        memory_object_max: int,
        row_body_max: int = ROW_BODY_MAX,
        max_bytes: int = 0,
    ) -> None:
        self.directory = directory
        #: the ready answers' ring (`edge.store.ready`), open once `start` has run
        self.ring: ReadyRing | None = None
        self._ring_bytes = ring_capacity(max_bytes)
        #: bodies up to this size are kept in their index row, not in a file
        self.row_body_max = row_body_max
        #: the byte total's key as the index stores it (`_add_bytes`), made once
        self._bytes_key: tuple[object, bool] | None = None
        #: this store's own temp directory (tmp/<owner>)
        self.tmp_dir = tmp_dir
        #: bodies up to this size are read whole by `load` (for the memory tier)
        self.memory_object_max = memory_object_max
        self.bytes = 0
        #: bytes of victims `DiskStore` has chosen whose delete has not yet changed
        #: `bytes` (lowered by `delete` just before it lowers `bytes`)
        self.evicting = 0
        self._index: diskcache.Cache | None = None
        self._lock_fd: int | None = None
        #: the writer lock: a thread lock within this process, then an flock on
        #: `writer.lock` across the processes sharing the directory (see `_writing`)
        self._write_lock = threading.Lock()
        self._writer_fd: int | None = None
        #: body directories known to exist (bodies/ab/cd), so a commit need not mkdir
        self._dirs: set[str] = set()
        #: objects committed to stable storage (`Install.durable`): their body file
        #: and its directory synced, their row in a transaction synced at its commit
        self.durable_commits = 0
        #: the largest row id in the index when `start` read it: every row written
        #: since has a larger one (`_keep_top`), so `DiskStore` reads them from there
        self.top_rowid = 0

    def start(self) -> tuple[list[str], list[int]]:
        """Open the directory: remove temp directories of dead stores, take this
        store's own, open the index and the ready answers' ring, sweep orphan bodies
        if a store died; the keys of every row, oldest first, and their bytes (with
        the location of a ready answer above `SIZE_BITS`).

        Cost: one SQL scan of (key, size) per row, not an unpickled row each, so a
        store of a million objects opens in a few seconds (docs/benchmarks.md,
        "Store scale"). Each row's byte size is kept in diskcache's `tag` column for
        this; rows written before that are read whole once. Two flat lists, not a
        tuple per row: a million small tuples freed after the recency list is built
        would leave the allocator's arenas holey, and the process bigger for good.
        """
        tmp_root = os.path.dirname(self.tmp_dir)
        os.makedirs(os.path.join(self.directory, "bodies"), exist_ok=True)
        os.makedirs(tmp_root, exist_ok=True)
        crashed = remove_dead_tmp_dirs(tmp_root)
        os.makedirs(self.tmp_dir)
        self._lock_fd = os.open(
            os.path.join(self.tmp_dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._writer_fd = os.open(
            os.path.join(self.directory, "writer.lock"),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
        self._index = diskcache.Cache(
            os.path.join(self.directory, "index"),
            eviction_policy="none",
            size_limit=2**62,
            cull_limit=0,
            statistics=0,
            tag_index=0,
            sqlite_cache_size=INDEX_CACHE_PAGES,
            disk_min_file_size=ROW_MAX,
        )
        keys: list[str] = []
        sizes: list[int] = []
        shared: dict[int, int] = {}  # one int object per distinct size
        untagged: list[str] = []
        # diskcache keeps a str key raw (as text); the byte total's key is pickled
        self.ring = ReadyRing(os.path.join(self.directory, "ready", "answers"), self._ring_bytes)
        rows = self._index._sql(
            "SELECT rowid, key, raw, tag, access_count FROM Cache ORDER BY store_time, rowid"
        )
        top = 0
        for rowid, key, raw, tag, ready in rows:
            top = max(top, rowid)
            if not raw or not isinstance(key, str):
                continue
            if isinstance(tag, int):
                keys.append(key)
                if isinstance(ready, int) and ready > 0:
                    sizes.append(tag | ready << SIZE_BITS)
                else:
                    sizes.append(shared.setdefault(tag, tag))
            else:
                untagged.append(key)
        for key in untagged:  # rows of an earlier release
            record = self.row(key)
            if record is not None:
                keys.append(key)
                sizes.append(record.size)
        self.top_rowid = top
        if crashed:
            # a store that died may have renamed a body in without writing its row;
            # one that closed cleanly left none (every rename has a row or was undone)
            self._sweep_orphans(self._referenced())
        with self._writing():
            if self._index.get(BYTES_KEY) is None:  # a new directory
                self._index.set(BYTES_KEY, sum(size & SIZE_MASK for size in sizes))
            self._count(0)
        return keys, sizes

    def row(self, key: str) -> _Record | None:
        """The index row of `key`; a row that no longer unpickles (its metadata class
        changed in an upgrade) is deleted and treated as absent, its files left to the
        orphan sweep."""
        try:
            value = self.index.get(key)
        except (pickle.UnpicklingError, AttributeError, ImportError, EOFError, TypeError) as exc:
            log.warning("dropping unreadable index row %r: %s", key, exc)
            self._drop_row(key)
            return None
        if isinstance(value, bytes):
            decoded = decode_row(value)
            if decoded is None:
                log.warning("dropping unreadable index row %r", key)
                self._drop_row(key)
            return decoded
        if not isinstance(value, _Record):
            return None
        if any(len(body) == 3 for body in value.bodies):
            bodies = tuple((*body[:3], None) for body in value.bodies)
            return _Record(value.meta, bodies)  # type: ignore[arg-type]
        return value

    def _drop_row(self, key: str) -> None:
        """Delete the unreadable row of `key` (its files are left to the orphan sweep)."""
        with self.index.transact():
            top = self._top()
            self._kill_ready(key)
            self.index.delete(key)
            self._keep_top(top)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction on the index, holding the writer lock.

        SQLite lets one writer in at a time and makes the others poll: its busy
        handler sleeps 1, 2, 5 ... up to 100 ms between tries. With several threads
        and processes committing at once that polling, not the writes, set the miss
        rate (docs/benchmarks.md, "Cold misses"). Taking a thread lock and then an
        flock first queues writers in the kernel, which wakes the next one as soon
        as the lock is free, so SQLite never finds the database busy.
        """
        if self._writer_fd is None:
            raise StoreError("store is not open")
        with self._write_lock:
            fcntl.flock(self._writer_fd, fcntl.LOCK_EX)
            try:
                with self.index.transact():
                    yield
            finally:
                fcntl.flock(self._writer_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _synchronous(self, full: bool) -> Iterator[None]:
        """With `full`, the transaction inside commits to stable storage (SQLite's
        `synchronous = FULL`: the WAL is synced at the commit) rather than at the
        next checkpoint, as every other commit does (`NORMAL`); the connection's own
        setting is back afterwards."""
        if not full:
            yield
            return
        sql = self.index._sql
        (before,) = sql("PRAGMA synchronous").fetchone()
        sql("PRAGMA synchronous = FULL")
        try:
            yield
        finally:
            sql(f"PRAGMA synchronous = {int(before)}")

    def _top(self) -> int:
        """The largest row id in the index (0 if empty)."""
        (top,) = self.index._sql("SELECT max(rowid) FROM Cache").fetchone()
        return int(top or 0)

    def _keep_top(self, top: int) -> None:
        """After deleting rows (inside the caller's transaction): when the row with
        the largest row id, `top`, went, move the byte total's row up to `top`.

        SQLite gives a new row the largest row id plus one (diskcache's `rowid
        INTEGER PRIMARY KEY` has no AUTOINCREMENT), so once the largest went, the
        next row would get its id again, and a reader that has read every row up to
        `top` (`DiskStore`'s sync of the keys other processes store) would never
        see it. With this the largest row id never falls, and every new row's id
        is above all that were read before. An update keeps its row id.
        """
        if self._top() < top:
            db_key, raw = self.index._disk.put(BYTES_KEY)
            self.index._sql(
                "UPDATE Cache SET rowid = ? WHERE key = ? AND raw = ?", (top, db_key, raw)
            )

    def _count(self, delta: int) -> None:
        """Change the shared byte total (inside the caller's transaction) and note it."""
        self.bytes = self._add_bytes(delta)

    def _add_bytes(self, delta: int) -> int:
        """Add `delta` to the byte total's row (inside the caller's transaction); the
        new total.

        One statement with the row's key pickled once: diskcache's `incr` pickles
        the key (a tuple, kept apart from the string keys of objects) and runs
        `pickletools.optimize` on every call, then reads and writes the row: 35 µs of
        the gateway's CPU per commit, more than the rows themselves for a batch of
        a few small bodies (docs/benchmarks.md, "The byte total in one statement").
        """
        if self._bytes_key is None:
            self._bytes_key = self.index._disk.put(BYTES_KEY)
        db_key, raw = self._bytes_key
        found = self.index._sql(
            "UPDATE Cache SET value = value + ? WHERE key = ? AND raw = ? AND mode = ?"
            " RETURNING value",
            (delta, db_key, raw, MODE_RAW),
        ).fetchone()
        if found is None or not isinstance(found[0], int):
            # no row (a directory diskcache made without it) or not a plain integer
            return int(self.index.incr(BYTES_KEY, delta, default=0))
        return int(found[0])

    def _referenced(self) -> set[str]:
        """The body files every row names (relative paths); reads every row. Bodies
        kept in their row name none."""
        referenced: set[str] = set()
        for key in self.keys():
            record = self.row(key)
            if record is not None:
                referenced.update(record.files())
        return referenced

    def _sweep_orphans(self, referenced: set[str]) -> None:
        """Remove body files no index row names (left by a crash between rename and row)."""
        sweep_orphans(self.directory, referenced)

    @property
    def index(self) -> diskcache.Cache:
        """The diskcache index (open)."""
        if self._index is None:
            raise StoreError("store is not open")
        return self._index

    def _new_body_path(self, encoding: str) -> tuple[str, str]:
        """A fresh (relative, absolute) body path in a sharded directory."""
        # 128 random bits, from the generator Python reseeds in every forked child
        # (uuid4 costs a getrandom syscall per name, seen in the miss profile)
        name = f"{random.getrandbits(128):032x}"
        rel = os.path.join("bodies", name[:2], name[2:4], f"{name}.{encoding}")
        full = os.path.join(self.directory, rel)
        parent = os.path.dirname(full)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        return rel, full

    def abs_path(self, rel: str) -> str:
        """The absolute path of a body named relative to the directory in a row."""
        return os.path.join(self.directory, rel)

    def _remove_files(self, record: _Record | None, keep: frozenset[str] = frozenset()) -> None:
        if record is None:
            return
        for rel in record.files():
            if rel not in keep:
                unlink_quietly(self.abs_path(rel))

    def install(
        self, key: str, src: str, encoding: str, meta: object, size: int, checksum: int
    ) -> tuple[_Record, _Record | None]:
        """Rename a finished body into place, then write its row (the commit point)."""
        result = self.install_many([Install(key, src, encoding, meta, size, checksum)])[0]
        if isinstance(result, BaseException):
            raise result
        return result[0], result[1]

    def install_many(
        self, items: Sequence[Install]
    ) -> list[tuple[_Record, _Record | None, int] | OSError]:
        """Place finished bodies, then write all their rows in one transaction (the
        commit point of each); per item its (row, old row, location of its ready
        answer or 0) or the error that stopped it. The keys are distinct (the caller
        holds their locks). Ready answers go to the ring in the same transaction,
        and the answers of the rows they replace are marked dead there.

        A body of at most `row_body_max` bytes goes into its row (read from its temp
        file if it was written to one, which goes once the row is in); a larger one
        is renamed into place (or, given whole, written there) before the row.
        One transaction for a batch, not one per body: a transaction costs a WAL
        append and the writer lock, whatever it holds.
        """
        results: list[tuple[_Record, _Record | None, int] | OSError] = []
        placed: list[tuple[int, str | None, _Record]] = []
        consumed: list[str] = []
        synced_dirs: set[str] = set()
        for n, item in enumerate(items):
            full: str | None = None
            try:
                place: str | bytes
                if item.size <= self.row_body_max:
                    place = item.data if item.data is not None else self._read_temp(item)
                else:
                    place, full = self._new_body_path(item.encoding)
                    if item.data is not None:
                        write_new(full, item.data, sync=item.durable)
                    else:
                        if item.durable:
                            sync_path(item.src)
                        os.rename(item.src, full)
                    if item.durable:
                        folder = os.path.dirname(full)
                        if folder not in synced_dirs:
                            sync_path(folder)  # the new name survives a power cut
                            synced_dirs.add(folder)
            except OSError as exc:
                if full is not None:
                    unlink_quietly(full)
                results.append(exc)
                continue
            if item.data is None and full is None:
                consumed.append(item.src)
            record = _Record(item.meta, ((item.encoding, place, item.size, item.checksum),))
            results.append((record, None, 0))
            placed.append((n, full, record))
        olds: list[tuple[int, _Record | None, int]] = []
        durable = sum(1 for n, _full, _record in placed if items[n].durable)
        try:
            with self._synchronous(durable > 0), self._writing():
                delta = 0
                readies = [(n, items[n].ready) for n, _full, _record in placed]
                made = [ready for _n, ready in readies if ready is not None]
                placed_at = iter(self._ring().append_many(made) if made else ())
                for (n, _full, record), (_n, ready) in zip(placed, readies, strict=True):
                    loc = next(placed_at) if ready is not None else 0
                    old = self._put_row(items[n].key, record, loc)
                    delta += record.size - (old.size if old is not None else 0)
                    olds.append((n, old, loc))
                self._count(delta)
        except BaseException:
            for _n, full, _record in placed:
                if full is not None:
                    unlink_quietly(full)
            raise
        self.durable_commits += durable
        for src in consumed:
            unlink_quietly(src)
        for (n, old, loc), (_n, _full, record) in zip(olds, placed, strict=True):
            self._remove_files(old)
            results[n] = (record, old, loc)
        return results

    def _ring(self) -> ReadyRing:
        if self.ring is None:
            raise StoreError("store is not open")
        return self.ring

    def _kill_ready(self, key: str, loc: object = None) -> None:
        """Mark dead the ready answer of `key` (its row's, looked up unless given as
        `loc`), inside a transaction that is about to replace or delete the row:
        every process holding its location then finds it dead (`edge.store.ready`)."""
        if loc is None:
            found = self.index._sql(_SELECT_READY, (key,)).fetchone()
            loc = found[0] if found is not None else 0
        if isinstance(loc, int) and loc > 0 and self.ring is not None:
            self.ring.kill(loc, key)

    def _put_row(self, key: str, record: _Record, ready: int = 0) -> _Record | None:
        """Write `record` as the row of `key` (inside the caller's transaction), with
        the location of its ready answer (0: none); the row it replaced, whose ready
        answer is marked dead.

        A row in the plain-tuple format (every object a node serves) is looked up
        and written with one statement each, as diskcache's `set` would write it
        (the same columns, `store_time` the restart's recency order); anything else
        (a pickled record, an old row diskcache keeps in a file of its own) goes
        through `row` and `set`. diskcache's `get` and `set` cost three lookups and
        most of the gateway's CPU per small commit in Python around them
        (docs/benchmarks.md, "The byte total in one statement").
        """
        encoded = encode_row(record)
        sql = self.index._sql
        if type(encoded) is not bytes or len(encoded) >= ROW_MAX:
            return self._set_row(key, encoded, record, ready)
        found = sql(_SELECT_ROW, (key,)).fetchone()
        now = time.time()
        if found is None:
            sql(_INSERT_ROW, (key, now, now, ready, record.size, MODE_RAW, encoded))
            return None
        rowid, mode, filename, value, old_ready = found
        if mode != MODE_RAW or filename is not None or not isinstance(value, bytes):
            return self._set_row(key, encoded, record, ready)
        self._kill_ready(key, old_ready)
        old = decode_row(value)
        if old is None:
            # unreadable: replaced, its files (if any) left to the orphan sweep
            log.warning("replacing unreadable index row %r", key)
        sql(_UPDATE_ROW, (now, now, ready, record.size, MODE_RAW, encoded, rowid))
        return old

    def _set_row(self, key: str, encoded: object, record: _Record, ready: int) -> _Record | None:
        """`_put_row` through diskcache's `set` (a row it keeps in a file, or pickled)."""
        self._kill_ready(key)
        old = self.row(key)
        self.index.set(key, encoded, tag=record.size)
        if ready:
            self.index._sql(_SET_READY, (ready, key))
        return old

    @staticmethod
    def _read_temp(item: Install) -> bytes:
        """The body of `item` from its temp file (a small body written as it came),
        checked against the checksum taken while it was written."""
        body = _read_small(item.src, item.size)
        if len(body) != item.size or body_checksum(body) != item.checksum:
            raise OSError(errno.EIO, f"temp file {item.src} changed while it was committed")
        return body

    def add_variants_many(
        self, items: Sequence[AddVariants]
    ) -> list[tuple[_Record, dict[str, bytes], int] | OSError | None]:
        """Checksum the finished files (or the bytes) of each item and put them in as
        its object's bodies in their codings, all in one transaction; per item the row, the bytes
        of the bodies small enough for the memory tier, and the location of the
        object's new ready answer (0: none); None, the files removed, if the object
        is gone or no longer has the body the files were made from (`made_from`);
        or the error that stopped it. The keys are distinct (the caller holds their
        locks).

        A body of at most `row_body_max` bytes goes into the row, as a small identity
        body does (and its file goes once the row is in); a larger one is renamed
        (or, given as bytes, written) into bodies/. The old ready answer is marked
        dead (the answer now depends on Accept-Encoding); with the item's `ready`,
        the heads for the codings the row then has, a new one holding every
        coding's answer is written when all its bodies are kept in the row."""
        results: list[tuple[_Record, dict[str, bytes], int] | OSError | None] = []
        reads: list[tuple[int, list[tuple[str, str | None, int, bytes | None, int]]]] = []
        for n, item in enumerate(items):
            try:
                reads.append((n, [self._read_variant(c, src) for c, src in item.paths.items()]))
                results.append(None)
            except OSError as exc:
                results.append(exc)
        olds: list[tuple[int, _Record, list[str]]] = []
        with self._writing():
            delta = 0
            for n, read in reads:
                item = items[n]
                old = self.row(item.key)
                if old is None or (
                    item.made_from is not None and not old.has_body(*item.made_from)
                ):
                    # gone, or replaced since the files were made from its body
                    for given in item.paths.values():
                        if isinstance(given, str):
                            unlink_quietly(given)
                    continue
                record = old
                moved: list[str] = []
                for encoding, file, size, data, checksum in read:
                    place: str | bytes
                    if size <= self.row_body_max and data is not None and len(data) == size:
                        place = data
                        if file is not None:
                            moved.append(file)
                    else:
                        place, full = self._new_body_path(encoding)
                        if file is not None:
                            os.rename(file, full)
                        else:
                            assert data is not None
                            write_new(full, data, sync=False)
                    record = record.with_body(encoding, place, size, checksum)
                made = None
                ready = item.ready
                if ready is not None and set(ready.codings) == set(record.codings):
                    bodies = record.bodies_in_row(READY_BODY_MAX)
                    if bodies is not None:
                        made = encode_record(item.key, ready, record.meta, bodies)
                loc = self._ring().append_many([made])[0] if made is not None else 0
                self._put_row(item.key, record, loc)  # the old answer marked dead
                delta += record.size - old.size
                small = {c: data for c, _s, _z, data, _h in read if data is not None}
                results[n] = (record, small, loc)
                olds.append((n, old, moved))
            self._count(delta)
        for n, old, moved in olds:
            for body in old.bodies:
                if body[0] in items[n].paths and isinstance(body[1], str):
                    unlink_quietly(self.abs_path(body[1]))
            for src in moved:
                unlink_quietly(src)
        return results

    def _read_variant(
        self, encoding: str, src: str | bytes
    ) -> tuple[str, str | None, int, bytes | None, int]:
        """A finished variant file, or its bytes: (coding, path or None, size, its
        bytes when small enough for the row or the memory tier, checksum)."""
        if isinstance(src, bytes):
            return encoding, None, len(src), src, body_checksum(src)
        size = os.stat(src).st_size
        data = None
        hasher = xxhash.xxh3_64()
        with open(src, "rb") as f:
            if size <= self.row_body_max or size <= self.memory_object_max:
                data = f.read()  # small: the memory tier keeps a copy
                hasher.update(data)
            else:
                while chunk := f.read(MiB):
                    hasher.update(chunk)
        return encoding, src, size, data, hasher.intdigest()

    def put_meta(
        self, key: str, meta: object, ready: ReadyHead | None = None
    ) -> tuple[_Record, int]:
        """Write `meta` as the row of `key`, keeping the bodies it has; the row and
        the location of its new ready answer (0: none). The old ready answer is
        marked dead (its freshness changed: a 304 refreshed it). With `ready`, the
        heads of the answer for `meta` in the codings it was made for, a new one is
        made when the row's bodies are just those codings, all kept in the row."""
        with self._writing():
            old = self.row(key)
            bodies = old.bodies if old is not None else ()
            record = _Record(meta, bodies)
            made = None
            if ready is not None and bodies and set(ready.codings) == set(record.codings):
                kept = record.bodies_in_row(READY_BODY_MAX)
                if kept is not None:
                    made = encode_record(key, ready, meta, kept)
            loc = self._ring().append_many([made])[0] if made is not None else 0
            self._put_row(key, record, loc)  # the old answer marked dead
        return record, loc

    def delete(self, keys: list[str], evicting: int = 0) -> None:
        """Remove the rows of `keys` (one transaction), then their body files.

        `evicting`: the bytes of these keys counted in `evicting`, taken off it in
        the same step as the delete's change reaches `bytes` (`evicting` first, so a
        reader on the event loop never sees the freed bytes subtracted twice).
        """
        gone: list[_Record] = []
        try:
            with self._writing():
                delta = 0
                top = self._top()
                for key in keys:
                    old = self.row(key)
                    if old is None:
                        continue
                    self._kill_ready(key)
                    self.index.delete(key)
                    delta -= old.size
                    gone.append(old)
                if gone:
                    self._keep_top(top)
                total = self._add_bytes(delta)
                self.evicting -= evicting
                evicting = 0
                self.bytes = total
        finally:
            self.evicting -= evicting
        for old in gone:
            self._remove_files(old)

    def load(
        self, key: str, record: _Record | None = None
    ) -> tuple[_Record, dict[str, bytes]] | None:
        """Read a row (unless given the one just read on the event loop), check its
        files exist, and read small bodies for the memory tier. A body kept in the
        row comes with it, checked against its checksum like one read from a file."""
        if record is None:
            record = self.row(key)
        if record is None:
            return None
        data: dict[str, bytes] = {}
        for encoding, place, size, checksum in record.bodies:
            if isinstance(place, bytes):
                if len(place) != size or (
                    checksum is not None and body_checksum(place) != checksum
                ):
                    if self.drop_if_same(key, record):
                        raise BodyCorrupt("a body kept in its index row fails its checksum")
                    return None
                continue
            full = self.abs_path(place)
            try:
                if size <= self.memory_object_max:
                    body = _read_small(full, size)
                    if len(body) != size:
                        raise FileNotFoundError(full)
                    if checksum is not None and body_checksum(body) != checksum:
                        # never into the memory tier: the object goes, all its codings
                        if self.drop_if_same(key, record):
                            raise BodyCorrupt(f"body file {full} fails its checksum")
                        return None
                    data[encoding] = body
                elif os.stat(full).st_size != size:
                    raise FileNotFoundError(full)
            except FileNotFoundError:
                # the row names a missing or damaged file: the entry is absent
                self.drop_if_same(key, record)
                return None
        return record, data

    def drop_if_same(self, key: str, record: _Record) -> bool:
        """Delete `key` if its row still names the bodies of `record`; whether it did."""
        with self._writing():
            current = self.row(key)
            if current is None or current.bodies != record.bodies:
                return False  # changed meanwhile: not ours to drop
            top = self._top()
            self._kill_ready(key)
            self.index.delete(key)
            self._keep_top(top)
            self._count(-current.size)
        self._remove_files(record)
        return True

    def drop_body(self, key: str, path: str) -> bool:
        """Delete `key` if one of its bodies is still the file `path`."""
        record = self.row(key)
        if record is None or all(self.abs_path(rel) != path for rel in record.files()):
            return False
        return self.drop_if_same(key, record)

    def keys(self) -> list[str]:
        """Every object key in the index (a full scan): one SQL query, not diskcache's
        iterator (a Python loop per row that held a gateway thread, and the GIL, for
        seconds with 10^6 objects)."""
        rows = self.index._sql("SELECT key FROM Cache WHERE raw = 1 ORDER BY rowid").fetchall()
        return [key for (key,) in rows if isinstance(key, str)]

    def keys_page(self, after: int, limit: int) -> tuple[list[str], int]:
        """Up to `limit` object keys of rows after row id `after`, in row order, and
        the last row id read (the cursor of the next page)."""
        rows = self.index._sql(
            "SELECT rowid, key FROM Cache WHERE raw = 1 AND typeof(key) = 'text'"
            " AND rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit),
        ).fetchall()
        if not rows:
            return [], after
        return [key for _rowid, key in rows if isinstance(key, str)], rows[-1][0]

    def keys_of(self, bases: list[str], separator: str, limit: int) -> list[str]:
        """The keys stored that are one of `bases` or start with one and `separator`
        (its variants' keys), up to `limit` in all: one range of the index's key
        order each, so the cost follows what matches, not what is stored."""
        found: list[str] = []
        sql = self.index._sql
        after = chr(ord(separator) + 1)
        for base in bases:
            if len(found) >= limit:
                break
            rows = sql(
                "SELECT key FROM Cache WHERE raw = 1 AND (key = ? OR (key > ? AND key < ?))"
                " LIMIT ?",
                (base, base + separator, base + after, limit - len(found)),
            ).fetchall()
            found.extend(key for (key,) in rows if isinstance(key, str))
        return found

    def metas(self, keys: list[str]) -> list[tuple[str, object]]:
        """The metadata of those `keys` that have a row."""
        found = []
        for key in keys:
            record = self.row(key)
            if record is not None:
                found.append((key, record.meta))
        return found

    def close(self) -> None:
        """Close the index and give up this store's temp directory."""
        if self._index is not None:
            self._index.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._writer_fd is not None:
            os.close(self._writer_fd)
            self._writer_fd = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _read_small(path: str, size: int) -> bytes:
    """Up to `size + 1` bytes of the file `path` (one byte more shows a file longer
    than its row says): an open, a read and a close, without a Python file object
    and the fstat and buffer it makes (a hit on a small body read from disk)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        body = os.read(fd, size + 1)
        while len(body) <= size:
            more = os.read(fd, size + 1 - len(body))
            if not more:
                break
            body += more
        return body
    finally:
        os.close(fd)
