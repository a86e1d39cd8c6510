"""Errors for people: one line saying what failed and what to do, never a repr.

`describe_client_error` turns an HTTP client's failure into a line naming the URL
and the system's own words for the errno ("Connection refused"); `exit_status`
writes how a process ended as a person reads it ("was killed by SIGKILL", not -9);
`RepeatFilter` logs a repeated warning once, then a count of its repeats, so a node
whose purge API is down does not print the same text every few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from urllib.parse import urlsplit

import aiohttp

__all__ = ["RepeatFilter", "describe_client_error", "exit_status", "install_repeat_filter"]

#: How long a repeated message stays quiet before its count is logged.
REPEAT_WINDOW = 60.0


def describe_client_error(exc: BaseException, url: str) -> str:
    """What went wrong reaching `url`, in one line (the errno's text, not a repr)."""
    where = _short_url(url)
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{where} is not a URL this client can use (give http://HOST:PORT)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        # asyncio words its own strerror ("Connect call failed (...)"); the errno's
        # text is what a person looks up
        reason = os.strerror(error.errno) if error.errno else str(error) or type(error).__name__
        return f"cannot connect to {exc.host}:{exc.port} ({where}): {reason}"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"{where} did not answer in time"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{where} closed the connection before answering"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{where} answered {exc.status}: {exc.message}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"{where} sent a broken answer"
    if isinstance(exc, OSError):
        return f"{where}: {os.strerror(exc.errno) if exc.errno else exc}"
    text = str(exc).strip()
    return f"{where}: {text or type(exc).__name__}"


def _short_url(url: str) -> str:
    """The URL without its query (which may carry long or private values)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return repr(url[:80])
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:120]


def exit_status(code: int | None) -> str:
    """How a child ended, in words: "exited with status 1", "was killed by SIGKILL"."""
    if code is None:
        return "ended with no status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once, then holds its repeats back for
    `window` seconds and lets the next one through with how many were held back.

    A repeat is the same logger, level and message text (arguments included); a
    traceback is printed the first time only. Records below WARNING always pass.
    """

    def __init__(self, window: float = REPEAT_WINDOW) -> None:
        super().__init__()
        self.window = window
        self._clock = time.monotonic
        #: key -> (when it was last let through, repeats held back since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to log `record` (rewritten to carry the count of held repeats)."""
        if record.levelno < logging.WARNING:
            return True
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return True
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        key = (record.name, record.levelno, text)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = (now, 0)
            return True
        since, held = seen
        if now - since < self.window:
            self._seen[key] = (since, held + 1)
            return False
        self._seen[key] = (now, 0)
        record.msg = f"{text} (and {held} more times in the last {now - since:.0f}s)"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


def install_repeat_filter(window: float = REPEAT_WINDOW) -> None:
    """Put one `RepeatFilter` on every handler of the root logger."""
    repeat = RepeatFilter(window)
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeat)
