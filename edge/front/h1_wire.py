"""The HTTP/1.1 front's wire vocabulary: its limits and refusals, status lines, the
Date field and header blocks, shared by the connection, its sink and the hit writer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import httptools
from multidict import CIMultiDict

#: Bodies below this are joined to their head and written in one call.
JOIN_BELOW = 16 * 1024

FRAMING = ("Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive")
_FRAMING_LOWER = frozenset(name.lower() for name in FRAMING)


@dataclass(frozen=True, slots=True)
class FrontLimits:
    """The bounds this front puts on each client (all from the node's fleet.toml table)."""

    #: bytes of a request head (request line and fields), at most
    max_head_size: int = 32 * 1024
    #: header fields of a request, at most
    max_fields: int = 100
    #: seconds of waiting for the next bytes of a request body (uploads)
    body_timeout: float = 60.0
    #: seconds of waiting for a client that does not read its answer
    send_timeout: float = 60.0


class FrameError(Exception):
    """A request this front refuses to parse further (status and a short reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BodyTimeout(ConnectionError):
    """An upload stopped sending for longer than `body_timeout`."""


_STATUS_LINES: dict[tuple[str, int], bytes] = {}


def status_line(version: str, status: int) -> bytes:
    """`HTTP/<version> <status> <phrase>\r\n`, built once per pair."""
    line = _STATUS_LINES.get((version, status))
    if line is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        line = f"HTTP/{version} {status} {reason}\r\n".encode()
        _STATUS_LINES[(version, status)] = line
    return line


class DateClock:
    """The Date field's value, formatted once per second (RFC 9110 6.6.1)."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        """Now as an HTTP-date."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


def header_block(headers: CIMultiDict[str], skip: tuple[str, ...] = FRAMING) -> list[str]:
    """`headers` as `Name: value\\r\\n` lines, without the framing fields (ours)."""
    # an ASCII name is one of `skip` in any case when its lower case is (one call
    # and a set lookup, where title() and two tuple scans cost twice that)
    lowered = _FRAMING_LOWER if skip is FRAMING else frozenset(s.lower() for s in skip)
    lines = []
    for name, value in headers.items():
        if name.isascii():
            if name.lower() in lowered:
                continue
        elif name in skip or name.title() in skip:
            continue
        lines.append(f"{name}: {value}\r\n")
    return lines


def parser_reason(error: Exception) -> str:
    """A short reason for a parser error, naming no byte the client sent."""
    if isinstance(error, httptools.HttpParserInvalidMethodError):
        return "invalid request method"
    if isinstance(error, httptools.HttpParserInvalidURLError):
        return "invalid request target"
    return "malformed request"
