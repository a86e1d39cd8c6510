"""Writing one body: batched appends on the I/O gateway, a running checksum, a
copy for the memory tier while the body stays small, and commit or abort.

A body is written to a temp file in the store's directory; nothing is visible until
`BodyWriter.commit` hands the finished file to its store, which renames it into
place and indexes it (see `edge.store.disk`). Fills tail the file while it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING

import xxhash

from edge.store.interface import KiB, StoredEntry, StoreError

if TYPE_CHECKING:
    from edge.store.base import StoreBase

__all__ = ["WRITE_BATCH", "WRITE_DELAY", "BodyWriter", "unlink_quietly"]

#: bytes gathered before one write syscall (small upstream chunks are batched)
WRITE_BATCH = 64 * KiB
#: the longest buffered bytes wait before they reach the file, so readers tailing a
#: slow fill still see data promptly
WRITE_DELAY = 0.005


class BodyWriter:
    """Writes one body to a temp file; `commit` makes it visible, `abort` discards it.

    Chunks are gathered up to `WRITE_BATCH` bytes (or `WRITE_DELAY` seconds) before a
    write syscall, which runs on the I/O gateway. `written` counts bytes already in the
    file at `path`, so a reader may tail the file up to `written` while it grows; the
    file exists once `written > 0`. `wait_written(n)` waits until more than `n` bytes
    are there or the writer is finished. An open file stays readable after `commit`
    (the file is renamed) and after `abort` (it is unlinked).
    """

    def __init__(
        self,
        store: StoreBase,
        key: str,
        encoding: str,
        path: str,
        keep_limit: int,
        durable: bool = False,
    ) -> None:
        self.key = key
        self.encoding = encoding
        self.path = path
        #: commit to stable storage (the service's `durable_objects`)
        self.durable = durable
        #: bytes in the file
        self.written = 0
        #: bytes accepted by write() (some may still be buffered)
        self.received = 0
        #: true once committed or aborted
        self.finished = False
        #: the body's announced length, if known: once that many bytes are in, the
        #: commit follows at once, so no flush timer is armed (one per small fill)
        self.expected: int | None = None
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
        # fed on the gateway's threads, one batch at a time under _io_lock
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
        elif self._timer is None and self._background is None and self.received != self.expected:
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
        whole = await self._take_unwritten()
        if whole is None:
            await self._drain(close=True)
            await self._close_file()
        self.finished = True
        self._notify()
        data = bytes(self._kept) if self._kept is not None else None
        try:
            return await self._store._commit_body(self, meta, data, whole)
        except BaseException:
            await self._store._run(unlink_quietly, self.path)
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
        await self._store._run(unlink_quietly, self.path)
        self._notify()

    # internals

    async def _take_unwritten(self) -> bytes | None:
        """The whole body, if none of it has reached the file yet (a small body that
        arrived within `WRITE_DELAY`): the store then writes it in place as part of the
        commit's own gateway call, with no temp file, rename or extra hop. Marks the
        writer finished, so a drain the timer started meanwhile writes nothing."""
        self._cancel_timer()
        async with self._io_lock:
            if self._fd is not None or self.written or self._error is not None:
                return None
            whole = bytes(self._buf)
            self._buf.clear()
            self._hasher.update(whole)
            self.written = len(whole)
            self.finished = True
            return whole

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

    async def _drain(self, close: bool = False) -> None:
        """Write what is buffered; with `close`, also close the file in the same call
        (a small body is then opened, written and closed in one gateway hop)."""
        self._cancel_timer()
        async with self._io_lock:
            if self.finished and not close:
                return  # committed whole, or aborted: nothing more goes to the file
            if self._error is not None:
                raise StoreError(f"writing {self.key!r} failed: {self._error}") from self._error
            if not self._buf and self._fd is not None and not close:
                return
            data = bytes(self._buf)
            self._buf.clear()
            try:
                if close:
                    await self._store._run(_append_close, self._fd, self.path, data, self._hasher)
                    self._fd = None
                else:
                    self._fd = await self._store._run(
                        _append, self._fd, self.path, data, self._hasher
                    )
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


def _append_close(fd: int | None, path: str, data: bytes, hasher: xxhash.xxh3_64) -> None:
    """`_append`, then close the file (also on failure)."""
    fd = _append(fd, path, data, hasher)
    os.close(fd)


def unlink_quietly(path: str) -> None:
    """Remove a file; no error if it is already gone (blocking: run on the gateway)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
