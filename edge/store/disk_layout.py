"""What a store directory holds, apart from the index's workings: the row format
(`_Record`, with small bodies inside it), a commit's description (`Install`), and
the clean-up of what crashed processes leave behind (dead temp directories, orphan
body files).

Split from `edge.store.disk_index` (which re-exports these names); the directory's
layout is described there. Every function here blocks: run it on the I/O gateway.
"""

from __future__ import annotations

import contextlib
import fcntl
import marshal
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.cache.model import ObjectMeta

if TYPE_CHECKING:
    from edge.store.ready import ReadyHead
from edge.store.interface import KiB
from edge.store.writer import unlink_quietly

__all__ = [
    "BYTES_KEY",
    "ORPHAN_GRACE",
    "ROW_BODY_MAX",
    "Install",
    "_Record",
    "decode_row",
    "encode_row",
    "remove_dead_tmp_dirs",
    "sweep_orphans",
    "sync_path",
    "write_new",
]

#: an unreferenced body file younger than this may belong to another process that
#: renamed it and is about to write its index row; the orphan sweep leaves it alone
ORPHAN_GRACE = 600.0
#: the index key of the byte total of all bodies (not a str, so never an object's key)
BYTES_KEY = ("edgeshield", "body-bytes")
#: the largest body kept inside its index row instead of a file of its own
#: (docs/benchmarks.md, "Small bodies in the index row": a commit of a 16 KiB body
#: into the row costs less than writing its file, and a read of it with the row
#: less than an open, a read and a close; diskcache keeps values below 32 KiB in
#: its SQLite rows the same way, `disk_min_file_size`). A row holds at most three
#: such bodies (identity, br, gzip), so it stays far below `ROW_MAX`
ROW_BODY_MAX = 16 * KiB
#: the largest pickled row diskcache keeps in SQLite rather than a file of its own
#: (its `disk_min_file_size`; its default of 32 KiB would put a row with three
#: bodies kept inside it in a separate file, the very file this saves)
ROW_MAX = 1024 * KiB


@dataclass(frozen=True, slots=True)
class _Record:
    """An index row as stored by diskcache (pickled)."""

    meta: object
    # (encoding, place, size, checksum or None): `place` is the body's file, a path
    # relative to the store directory (str), or the body itself kept in the row
    # (bytes, at most `ROW_BODY_MAX`, committed with the row: no file). Rows written
    # before checksums have 3-tuples, read as "not known" (see `DiskIndex.row`);
    # rows written before bodies were kept in rows only ever have paths
    bodies: tuple[tuple[str, str | bytes, int, int | None], ...] = field(default=())

    def with_body(
        self, encoding: str, place: str | bytes, size: int, checksum: int | None
    ) -> _Record:
        """This row with `encoding`'s body replaced by the one given."""
        others = tuple(b for b in self.bodies if b[0] != encoding)
        return _Record(self.meta, (*others, (encoding, place, size, checksum)))

    def files(self) -> list[str]:
        """The body files it names (relative paths); bodies kept in the row have none."""
        return [b[1] for b in self.bodies if isinstance(b[1], str)]

    @property
    def size(self) -> int:
        """Bytes of all its bodies."""
        return sum(b[2] for b in self.bodies)

    @property
    def codings(self) -> tuple[str, ...]:
        """The codings of its bodies, in its order."""
        return tuple(b[0] for b in self.bodies)

    def has_body(self, encoding: str, size: int, checksum: int | None) -> bool:
        """Whether it has this body (by its coding, size and checksum, when known)."""
        return any(
            body[0] == encoding
            and body[2] == size
            and (checksum is None or body[3] is None or body[3] == checksum)
            for body in self.bodies
        )

    def bodies_in_row(self, limit: int) -> dict[str, bytes] | None:
        """Its bodies by coding when every one is kept in the row, whole, and of at
        most `limit` bytes (what a ready answer is made of); else None."""
        found: dict[str, bytes] = {}
        for encoding, place, size, _checksum in self.bodies:
            if not isinstance(place, bytes) or len(place) != size or size > limit:
                return None
            found[encoding] = place
        return found


@dataclass(frozen=True, slots=True)
class Install:
    """One finished body to rename (or, given `data`, write) into place and index
    (see `DiskIndex.install_many`)."""

    key: str
    src: str
    encoding: str
    meta: object
    size: int
    checksum: int
    #: the whole body when it was never written to `src`: written in place instead
    data: bytes | None = None
    #: on stable storage before the commit returns (the service's `durable_objects`)
    durable: bool = False
    #: its ready answer (`edge.store.ready.encode_record`), written to the ring with
    #: the row, which keeps its location
    ready: bytes | None = None


@dataclass(frozen=True, slots=True)
class AddVariants:
    """Finished files to move in as an object's bodies in their codings (see
    `DiskIndex.add_variants_many`), with the heads of its ready answer in every
    coding it then has (`edge.store.ready.ReadyHead`), if one is to be made."""

    key: str
    #: coding → the finished file, or the body itself (made in memory)
    paths: Mapping[str, str | bytes]
    ready: ReadyHead | None = None
    #: (coding, size, checksum) of the body the files were made from: the row must
    #: still have it, or the files are another object's variants
    made_from: tuple[str, int, int | None] | None = None


# rows are pickled under the name older releases wrote them with (`edge.store` before
# it became a package, which still exports it), so either release reads the other's rows
_Record.__module__ = "edge.store"


#: the first bytes of a row in the plain-tuple format (`encode_row`); a pickle
#: (protocol 2 and up) starts with 0x80, so the two never meet
ROW_MAGIC = b"ES1\x00"
#: marshal's format version for rows (4: Python 3.4 on, the one of every 3.11+)
_MARSHAL_VERSION = 4
_new_meta = ObjectMeta.__new__
#: values in a row's metadata state: a row written with another set of fields (a
#: release that added or removed one) does not decode, rather than leave one unset
_META_FIELDS = len(ObjectMeta.__dataclass_fields__)


def encode_row(record: _Record) -> bytes | _Record:
    """What the index stores for `record`: for an `ObjectMeta` (every object a node
    serves), `ROW_MAGIC` and a marshalled tuple of plain values (the metadata's
    fields in order, then the bodies), which diskcache keeps as raw bytes; anything
    else (a Vary index, a test's metadata) the record itself, pickled by diskcache.

    Why: a disk hit decodes its row on the event loop, and unpickling a `_Record`
    of an `ObjectMeta` took 4.7 µs of CPU (the record's dataclass state set field by
    field in Python, two classes looked up by name) against 3.4 µs for this
    (`bench/row_codec.py`, docs/benchmarks.md). A release before this one cannot read such a row (it
    is not a `_Record` to it, so absent: the object is fetched again). A value
    marshal does not take (a subclass of str) leaves the record pickled."""
    meta = record.meta
    if type(meta) is not ObjectMeta:
        return record
    row: Any = (meta.__getstate__(), record.bodies)
    try:
        return ROW_MAGIC + marshal.dumps(row, _MARSHAL_VERSION)
    except ValueError:
        return record  # a value marshal does not take (a str subclass): pickled


def decode_row(value: bytes) -> _Record | None:
    """The record `encode_row` made `value` from; None when it is not one (damaged,
    or of an unknown format): the caller treats the row as unreadable."""
    if not value.startswith(ROW_MAGIC):
        return None
    try:
        state, bodies = marshal.loads(memoryview(value)[len(ROW_MAGIC) :])
    except (ValueError, EOFError, TypeError):
        return None
    if type(state) is not tuple or len(state) != _META_FIELDS or type(bodies) is not tuple:
        return None
    for body in bodies:
        if type(body) is not tuple or len(body) != 4:
            return None
    meta = _new_meta(ObjectMeta)
    try:
        meta.__setstate__(state)
    except (TypeError, ValueError):
        return None
    return _Record(meta, bodies)


def sweep_orphans(directory: str, referenced: set[str]) -> None:
    """Remove body files under `directory` that no index row names (`referenced`:
    paths relative to it), left by a crash between rename and row; files younger
    than `ORPHAN_GRACE` may be another process's commit in flight and stay."""
    bodies = os.path.join(directory, "bodies")
    cutoff = time.time() - ORPHAN_GRACE
    for dirpath, _dirs, files in os.walk(bodies):
        for name in files:
            full = os.path.join(dirpath, name)
            if os.path.relpath(full, directory) in referenced:
                continue
            with contextlib.suppress(FileNotFoundError):
                if os.stat(full).st_mtime < cutoff:
                    os.unlink(full)


def write_new(path: str, data: bytes, sync: bool = False) -> None:
    """Write `data` as the new file `path` (never an existing one), and with `sync`
    to stable storage; on failure no file is left there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    os.close(fd)


def sync_path(path: str) -> None:
    """Flush the file or directory `path` to stable storage (a directory: the names
    renamed or created in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_dead_tmp_dirs(tmp_root: str) -> int:
    """Remove temp directories whose owning store is gone (its flock is free); how
    many there were (a store that closes removes its own: these died)."""
    dead = 0
    for name in os.listdir(tmp_root):
        path = os.path.join(tmp_root, name)
        if not os.path.isdir(path):
            unlink_quietly(path)
            continue
        try:
            fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            shutil.rmtree(path, ignore_errors=True)  # its owner died before locking
            dead += 1
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live store owns it
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        dead += 1
    return dead
