"""Collapsed upstream fetches: one fill per cache key, its body streamed to every waiter.

A `Fill` is owned by a background task (so a client that goes away does not cancel
the fetch others wait for). Waiters learn what came back through `head()`, then read
the body with `read()`, which tails the file the store is writing: nothing is held
whole in memory, and each waiter gets the bytes as soon as they are on disk. The file
is read through one descriptor opened at the start, so the store renaming the file
into place when the fill commits does not disturb readers. Every file call runs on
the I/O gateway (`edge.store.io`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from enum import Enum
from typing import NamedTuple, TypeVar

from edge.cache.model import ObjectMeta
from edge.store import BodyRef, io, read_body
from edge.upstream import GENERATED_ERROR_HEADER, UNREACHABLE, UpstreamError, UpstreamResponse

T = TypeVar("T")

READ_CHUNK = 256 * 1024
#: A body declared at most this long is answered whole once committed, from the
#: copy the commit keeps: tailing its file would cost an open, a read and a close on
#: the I/O gateway to hand out bytes that are held back until the commit anyway
#: (the last chunk always is, and a body this small is one chunk).
WHOLE_AT_COMMIT = 64 * 1024


class HeadKind(Enum):
    """What a fill turned out to be."""

    STREAM = "stream"  # storable: the body is being written, read it with read()
    PASS = "pass"  # not storable: the originator takes the live response, others go alone
    NOT_MODIFIED = "not-modified"  # revalidated: the stored object is good (meta updated)
    ERROR = "error"  # upstream failed: `error` says how; stale may stand in


class FillHead(NamedTuple):
    """The first thing a waiter learns about a fill (a named tuple: one is made per
    fill, and a tuple is made in a third of a frozen dataclass's time)."""

    kind: HeadKind
    meta: ObjectMeta | None = None
    #: for STREAM: the body's length if the upstream declared it
    length: int | None = None
    encoding: str = "identity"
    response: UpstreamResponse | None = None
    error: UpstreamError | None = None
    #: for ERROR from an upstream that answered 5xx: status, headers and a short body
    error_status: int = 0
    error_pairs: tuple[tuple[str, str], ...] = ()
    error_body: bytes = b""
    #: for PASS: why it is not stored (Cache-Status detail), e.g. "too-large"
    detail: str = ""

    @property
    def unreachable(self) -> bool:
        """Whether an ERROR means the origin could not be reached (RFC 9111 4.2.4's
        "disconnected"), as opposed to an answer with a 5xx status: our own failure
        to connect, or a shield's generated error saying the same."""
        if self.error_status:
            generated = GENERATED_ERROR_HEADER.lower()
            return any(
                name.lower() == generated and value == UNREACHABLE
                for name, value in self.error_pairs
            )
        return self.error is not None and self.error.unreachable


class FillFailed(Exception):
    """The fill broke off after its head was sent: the reader's response must be cut."""

    def __init__(self, message: str, *, drained: bool = False) -> None:
        super().__init__(message)
        #: the reader had every byte written before the break
        self.drained = drained


class Fill:
    """One in-flight upstream fetch for a key, shared by every request that wants it."""

    def __init__(self, key: str, started_at: float) -> None:
        self.key = key
        #: local wall time the upstream request started (purge race rule)
        self.started_at = started_at
        self.waiters = 0
        self._loop = asyncio.get_running_loop()
        #: the head once set, and the futures of the waiters for it: a future each, so
        #: a waiter that is cancelled cancels only its own (what `asyncio.shield` of
        #: one shared future gave, for an outer future and two callbacks per waiter)
        self._head: FillHead | None = None
        self._head_waiters: list[asyncio.Future[FillHead]] = []
        #: when the head was set (`time.perf_counter`): a waiter handed it at the
        #: commit (`head(whole=True)`) waited for the upstream until then
        self.head_time = 0.0
        #: waiters for the head that want the body too (`head(whole=True)`)
        self._whole_waiters: list[asyncio.Future[FillHead]] = []
        #: the waiters for the commit or the break (`settled`), a future each
        self._settle_waiters: list[asyncio.Future[None]] = []
        self._fd: int | None = None
        self._path: str | None = None
        self._committed: BodyRef | None = None
        self._written = 0
        self._finished = False
        self._failed = False
        self._drain = False
        #: set when the body grows or the fill ends; made when a reader first waits
        self._changed: asyncio.Event | None = None
        self._readers = 0
        self._closed = False
        self._pass_taken = False
        #: made only when the fill's owner waits for a PASS head to be taken
        self._pass_claimed: asyncio.Event | None = None
        #: the key the body is stored under (a variant key when the response varies)
        self.store_key = key
        #: the request fields the response varies on (Accept-Encoding aside)
        self.vary_fields: tuple[str, ...] = ()
        #: readers wait for the commit and read the committed body (WHOLE_AT_COMMIT)
        self.whole_at_commit = False

    # -- the owner's side ---------------------------------------------------------
    def set_head(self, head: FillHead, body_path: str | None = None) -> None:
        """Tell waiters what came back; for STREAM, `body_path` is the file being written."""
        self._path = body_path
        self.whole_at_commit = (
            head.kind is HeadKind.STREAM
            and head.length is not None
            and head.length <= WHOLE_AT_COMMIT
        )
        if self._head is None:
            self._head = head
            self.head_time = time.perf_counter()
            _resolve(self._head_waiters, head)
            self._head_waiters = []
            if not self.whole_at_commit or self._finished or self._failed:
                _resolve(self._whole_waiters, head)
                self._whole_waiters = []

    def progress(self, written: int) -> None:
        """More of the body is on disk."""
        self._written = written
        self._wake()

    def finish(self, committed: BodyRef | None) -> None:
        """The whole body is on disk and committed as `committed`."""
        self._committed = committed
        self._finished = True
        self._wake()
        self._maybe_close()

    def fail(self, drain: bool = False) -> None:
        """The fill broke off: readers stop with FillFailed; with `drain`, those that
        have the file open first read what was written (a body cut at a size limit,
        whose readers are cut there too, never handed a complete-looking body)."""
        self._failed = True
        self._drain = drain
        self._wake()
        self._maybe_close()

    async def settled(self) -> bool:
        """Wait until the fill has committed (True) or broken off (False)."""
        if not (self._finished or self._failed):
            waiter = self._loop.create_future()
            self._settle_waiters.append(waiter)
            await waiter
        return self._finished

    def _wake(self) -> None:
        changed = self._changed
        if changed is not None:
            # a reader that took this event before its wait still sees it set
            changed.set()
            self._changed = None
        if self._finished or self._failed:
            _resolve(self._settle_waiters, None)
            self._settle_waiters = []
            if self._head is not None:
                _resolve(self._whole_waiters, self._head)
                self._whole_waiters = []

    def _change(self) -> asyncio.Event:
        """The event the next change of the fill sets."""
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.Event()
        return changed

    def _maybe_close(self) -> None:
        done = self._finished or self._failed
        if done and self._readers == 0 and self._fd is not None and not self._closed:
            self._closed = True
            fd, self._fd = self._fd, None
            io.detach(os.close, fd)

    def claim_pass(self) -> bool:
        """Take a PASS head's live response; True for the first caller only."""
        if self._pass_taken:
            return False
        self._pass_taken = True
        if self._pass_claimed is not None:
            self._pass_claimed.set()
        return True

    async def pass_claimed(self, timeout: float) -> bool:
        """Wait up to `timeout` for someone to claim a PASS head's response."""
        if self._pass_taken:
            return True
        if self._pass_claimed is None:
            self._pass_claimed = asyncio.Event()
        try:
            await asyncio.wait_for(self._pass_claimed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- the waiters' side --------------------------------------------------------
    async def head(self, *, whole: bool = False) -> FillHead:
        """Wait for the fill's head.

        `whole`: the caller reads the body next; the head of a small fill
        (`whole_at_commit`, whose body is readable only once committed) is then
        handed over when the fill has settled, so the caller wakes once, not once
        for the head and again for the body."""
        head = self._head
        settled = self._finished or self._failed
        if head is not None and (not whole or settled or not self.whole_at_commit):
            return head
        waiter: asyncio.Future[FillHead] = self._loop.create_future()
        if whole:
            self._whole_waiters.append(waiter)
        else:
            self._head_waiters.append(waiter)
        return await waiter

    @property
    def finished(self) -> bool:
        """Whether the body is complete."""
        return self._finished

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The body bytes [start, end) as they reach disk; FillFailed if the fill breaks.

        The last chunk is held back until the fill has committed: a client that has
        the whole body finds the object in the store with its next request (and a
        fill that breaks at the very end never hands out a complete-looking body).
        """
        pending: bytes | None = None
        try:
            async for chunk in self._read_growing(start, end):
                if pending is not None:
                    yield pending
                pending = chunk
        except FillFailed as exc:
            if exc.drained and pending is not None:
                yield pending  # the caller cuts the connection after it
            raise
        if pending is not None:
            yield pending

    async def whole(self, start: int = 0, end: int | None = None) -> bytes:
        """The body bytes [start, end) of a `whole_at_commit` fill, once committed;
        FillFailed if it broke off. What `read` would yield, joined, without its
        chain of generators: the committed copy is in memory, so usually no copy."""
        if self._path is None:
            raise FillFailed("this fill has no body")
        if not await self.settled() or self._committed is None:
            raise FillFailed(f"the fill of {self.key} broke off")
        ref = self._committed
        data = ref.data
        if data is None or len(data) != ref.size:
            return b"".join([chunk async for chunk in read_body(ref, start, end)])
        stop = ref.size if end is None else min(end, ref.size)
        if start == 0 and stop == ref.size:
            return data
        return data[start:stop] if start < stop else b""

    async def _read_growing(self, start: int, end: int | None) -> AsyncIterator[bytes]:
        if self._path is None:
            raise FillFailed("this fill has no body")
        if self.whole_at_commit:
            if not await self.settled() or self._committed is None:
                raise FillFailed(f"the fill of {self.key} broke off")
            async for chunk in read_body(self._committed, start, end):
                yield chunk
            return
        self._readers += 1
        position = start
        try:
            while True:
                if self._failed and (
                    not self._drain or self._fd is None or position >= self._written
                ):
                    raise FillFailed(f"the fill of {self.key} broke off", drained=self._drain)
                if self._fd is None and self._finished and self._committed is not None:
                    # never opened while growing: read the committed body from the store
                    async for chunk in read_body(self._committed, position, end):
                        yield chunk
                    return
                limit = self._written if end is None else min(self._written, end)
                if position < limit:
                    if self._fd is None:
                        changed = self._change()
                        try:
                            fd = await io.run(os.open, self._path, os.O_RDONLY | os.O_CLOEXEC)
                        except FileNotFoundError:
                            # renamed by the commit in between: wait for finish()
                            await changed.wait()
                            continue
                        if self._fd is None:
                            self._fd = fd
                        else:  # another reader opened it meanwhile
                            io.detach(os.close, fd)
                    size = min(READ_CHUNK, limit - position)
                    chunk = await io.run(os.pread, self._fd, size, position)
                    if not chunk:
                        raise FillFailed("body file shorter than written")
                    position += len(chunk)
                    yield chunk
                    continue
                if end is not None and position >= end:
                    return
                if self._finished:
                    return
                await self._change().wait()
        finally:
            self._readers -= 1
            self._maybe_close()


def _resolve(waiters: list[asyncio.Future[T]], value: T) -> None:
    """Give `value` to each waiter still waiting (a cancelled one is done already)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(value)


class FillTable:
    """The fills in flight, by key: the collapsing point."""

    def __init__(self) -> None:
        self._fills: dict[str, Fill] = {}

    def get(self, key: str) -> Fill | None:
        """The fill in flight for `key`, if any."""
        return self._fills.get(key)

    def start(self, key: str, started_at: float) -> Fill:
        """Register a new fill for `key` (the caller runs it)."""
        fill = Fill(key, started_at)
        self._fills[key] = fill
        return fill

    def done(self, fill: Fill) -> None:
        """Forget a finished fill, so the next request looks in the store."""
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]


__all__ = [
    "READ_CHUNK",
    "WHOLE_AT_COMMIT",
    "Fill",
    "FillFailed",
    "FillHead",
    "FillTable",
    "HeadKind",
    "read_limited",
    "skip_bytes",
]


async def skip_bytes(chunks: AsyncIterator[bytes], count: int) -> AsyncIterator[bytes]:
    """The chunks after their first `count` bytes."""
    async for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0


async def read_limited(response: UpstreamResponse, limit: int) -> bytes:
    """Up to `limit` bytes of the body (an error page), the response then closed."""
    body = bytearray()
    try:
        async for chunk in response.iter_chunks():
            body += chunk
            if len(body) >= limit:
                break
    except UpstreamError:
        pass
    finally:
        response.close()
    return bytes(body[:limit])
