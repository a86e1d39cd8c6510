"""Single byte ranges (RFC 9110 14): parsing Range, Content-Range values.

A request for several ranges is answered with the whole body (200): RFC 9110 14.2
says "A server MAY ignore the Range header field", and a single 200 is cheaper and
safer than multipart/byteranges (no coalescing games, no amplification).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# int-range = first-pos "-" [ last-pos ]; suffix-range = "-" suffix-length
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)


@dataclass(frozen=True)
class ByteRange:
    """A satisfiable range of a body: bytes `start` to `end`, both inclusive."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """How many bytes the range holds."""
        return self.end - self.start + 1


@dataclass(frozen=True)
class Unsatisfiable:
    """No requested range overlaps the body: answer 416 with `unsatisfied_range(size)`."""

    size: int


def _number(digits: str) -> int:
    """A non-negative decimal of any length; huge ones saturate (they only compare)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18


def _resolve(first: str, last: str, size: int) -> ByteRange | None:
    """The part of a `size`-byte body a valid range-spec selects, None if none."""
    if not first:  # suffix-range: the last N bytes (RFC 9110 14.1.2)
        suffix = _number(last)
        if suffix == 0 or size == 0:
            return None
        return ByteRange(max(size - suffix, 0), size - 1)
    start = _number(first)
    if start >= size:
        return None
    # "If the last-pos value is absent, or if the value is greater than or equal to
    # the current length of the representation data, the byte range is interpreted
    # as the remainder of the representation" (RFC 9110 14.1.2).
    end = size - 1 if not last else min(_number(last), size - 1)
    return ByteRange(start, end)


def parse_range(value: str | None, size: int) -> ByteRange | Unsatisfiable | None:
    """The range to serve from a `size`-byte body.

    None: serve the whole body (no Range, a unit other than bytes, a syntactically
    invalid value, or several ranges — see the module docstring). Unsatisfiable:
    every requested range lies beyond the body (always so for an empty body) → 416.
    """
    if value is None:
        return None
    unit, eq, range_set = value.strip(" \t").partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    specs: list[tuple[str, str]] = []
    for member in range_set.split(","):
        member = member.strip(" \t")
        if not member:
            continue  # RFC 9110 5.6.1: empty list elements are ignored
        match = _RANGE_SPEC.fullmatch(member)
        if match is None:
            return None
        first, last = match.groups()
        if not first and not last:
            return None
        # "A range-spec is invalid if the last-pos value is present and less than
        # the first-pos" (RFC 9110 14.1.1); an invalid Range is ignored.
        if first and last and _number(last) < _number(first):
            return None
        specs.append((first, last))
    if not specs:
        return None
    resolved = [_resolve(first, last, size) for first, last in specs]
    satisfiable = [r for r in resolved if r is not None]
    if not satisfiable:
        return Unsatisfiable(size)
    if len(specs) > 1:
        return None
    return satisfiable[0]


def content_range(r: ByteRange, size: int) -> str:
    """The Content-Range of a 206: "bytes start-end/size" (RFC 9110 14.4)."""
    return f"bytes {r.start}-{r.end}/{size}"


def unsatisfied_range(size: int) -> str:
    """The Content-Range of a 416: "bytes */size" (RFC 9110 14.4)."""
    return f"bytes */{size}"
