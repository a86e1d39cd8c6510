"""The process's one gateway for blocking work: every disk touch of a node goes here.

Store operations (diskcache and body files), fill readers tailing a growing body,
the compressor making variants, the purge state files and the background sweeps
all run their blocking calls through `run` (or `detach`, for a close from code that
cannot await). One bounded pool per process means one place to size and to look
for the threads (they are named `edge-io-N`), and no blocking call hidden on the
event loop or in the loop's default executor.

What never comes here: a memory-tier hit (`ObjectStore.peek`, bodies held in
memory). It needs no thread, and a hop through a pool would cost it more than
serving it does.

The functions passed must not themselves wait on the gateway (they would hold a
thread while waiting for one); they are leaf calls: open, pread, rename, a
diskcache transaction, a compression pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["THREADS", "THREAD_PREFIX", "calls", "detach", "run"]

T = TypeVar("T")

log = logging.getLogger("edgeshield.io")

#: threads of the pool: a disk read of a large hit, a fill's writes, a sweep and a
#: compression pass can all be in flight at once without waiting on each other
THREADS = 8
#: the name prefix of the pool's threads (tests and thread dumps look for it)
THREAD_PREFIX = "edge-io"

#: blocking calls handed to the gateway so far by this process (tests count them)
calls = 0

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The process's pool, made on first use (so a forked worker makes its own)."""
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix=THREAD_PREFIX)
            pool = _pool
    return pool


def _forget_after_fork() -> None:
    # a forked child inherits the pool object but none of its threads
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run the blocking call `fn(*args)` on the gateway's threads and await its result.

    Exceptions are the call's own; callers translate them at their seam (the store
    turns OSError and diskcache errors into `StoreError`).
    """
    global calls
    calls += 1
    return await asyncio.get_running_loop().run_in_executor(_executor(), fn, *args)


def detach(fn: Callable[..., object], *args: Any) -> None:
    """Start the blocking call `fn(*args)` on the gateway without waiting for it.

    For releases from synchronous code (closing a file descriptor when the last
    reader of a fill is done); a failure is logged, there is no one to tell.
    """
    global calls
    calls += 1
    future = _executor().submit(fn, *args)
    future.add_done_callback(_log_failure)


def _log_failure(future: Future[object]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("background I/O failed: %s", exc)
