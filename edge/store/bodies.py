"""Reading stored bodies: from memory when held there, else from their files through
the I/O gateway, checked against the checksum taken when they were written.

`read_body` streams a `BodyRef` (a range or the whole); `open_body` opens the file
before a response starts, so a body replaced or evicted after that stays readable
(body files are only ever unlinked, never rewritten) and one already gone is known
before any header has left. A truncated file raises `BodyGone` before the bytes it
lacks would be yielded; a whole body read from disk holds its last chunk back until
its checksum matches (`BodyCorrupt` instead), so a damaged body never reaches a
client looking complete.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import xxhash

from edge.store import io
from edge.store.interface import BodyCorrupt, BodyGone, BodyRef, KiB, StoreError

__all__ = ["FileIdentity", "OpenBody", "VerifiedBodies", "open_body", "read_body"]

#: What names one body file's bytes as checked: device, inode, size, mtime (ns) and
#: the checksum the store took when writing it.
FileIdentity = tuple[int, int, int, int, int]


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
) -> AsyncIterator[bytes]:
    """Yield the bytes [start, end) of a body (end exclusive, None: to the end).

    From `ref.data` when set, else from `ref.path` with every file call on the I/O
    gateway. Raises `BodyGone` if the file is missing or shorter than `ref.size`, before
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
    chunks = _read_file(ref, start, stop, chunk_size)
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


async def _read_file(ref: BodyRef, start: int, stop: int, chunk_size: int) -> AsyncIterator[bytes]:
    assert ref.path is not None
    want = min(chunk_size, stop - start)
    try:
        fd, chunk = await io.run(_open_at, ref.path, start, want)
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
                chunk = await io.run(os.pread, fd, min(chunk_size, stop - pos), pos)
            except OSError as exc:
                raise StoreError(f"reading {ref.path}: {exc}") from exc
    finally:
        # the close survives a cancelled reader (the client went away)
        await asyncio.shield(io.run(os.close, fd))


class OpenBody:
    """A body file opened before a response starts, read by offset on the gateway.

    Opening first means a body replaced or evicted after this point stays readable
    (files are only ever unlinked, never rewritten), and a body already gone is
    known before any header has left.
    """

    def __init__(self, fd: int, ref: BodyRef, stat: os.stat_result | None = None) -> None:
        self._fd = fd
        self.ref = ref
        #: the file's identity when it is the size `ref` says and has a checksum (None:
        #: it cannot be remembered as checked)
        self.identity: FileIdentity | None = None
        if stat is not None and stat.st_size == ref.size and ref.checksum is not None:
            self.identity = (
                stat.st_dev,
                stat.st_ino,
                stat.st_size,
                stat.st_mtime_ns,
                ref.checksum,
            )

    @property
    def fd(self) -> int:
        """The open file's descriptor (for `os.sendfile`; closed by `close`)."""
        return self._fd

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
        pos = start
        while pos < end:
            chunk = await io.run(os.pread, self._fd, min(chunk_size, end - pos), pos)
            if not chunk:
                raise BodyGone(f"body file {self.ref.path} ends at {pos}, expected {end}")
            pos += len(chunk)
            yield chunk

    async def close(self) -> None:
        """Close the file (shielded: survives a cancelled reader)."""
        await asyncio.shield(io.run(os.close, self._fd))


def _open_stat(path: str) -> tuple[int, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


async def open_body(ref: BodyRef) -> OpenBody:
    """Open a stored body file (and stat it, in the same trip to the gateway); BodyGone
    if it is not there any more."""
    if ref.path is None:
        raise BodyGone("body has no file")
    try:
        fd, stat = await io.run(_open_stat, ref.path)
    except FileNotFoundError as exc:
        raise BodyGone(f"body file {ref.path} is gone") from exc
    return OpenBody(fd, ref, stat)


class VerifiedBodies:
    """The body files this process has read whole and found matching their checksum,
    by `FileIdentity`, so later answers may send them with `os.sendfile` unread.

    A file changed since (written to: a new mtime; replaced: a new inode) is not in
    the set and is checked again the next time it is sent whole; damage that leaves
    the mtime alone (the disk's own) is the background scrubber's to find
    (edge/scrub.py). Bounded: when full, the set starts over, so the cost of a full
    set is one more checked read per body.
    """

    def __init__(self, limit: int = 65536) -> None:
        self._limit = limit
        self._seen: set[FileIdentity] = set()

    def __contains__(self, identity: FileIdentity | None) -> bool:
        return identity is not None and identity in self._seen

    def add(self, identity: FileIdentity | None) -> None:
        """Remember a file just read whole and found matching its checksum."""
        if identity is None:
            return
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(identity)

    def discard(self, identity: FileIdentity | None) -> None:
        """Forget a file (it failed a check)."""
        if identity is not None:
            self._seen.discard(identity)
