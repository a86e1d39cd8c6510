"""HTTP/2's hit lane and raw frames: answers we built, framed without the `h2` library.

The `h2` library stays the state machine of the connection (its SETTINGS limits,
header-list bound, flow-control accounting and our rapid-reset count; the common
request is read past it by edge/front/h2_inbound.py); what it costs on the way out
(a header-validation pass, HPACK's per-field table search and Huffman coding, a frame
object per frame, debug-logging calls) is spent on answers whose fields we made
ourselves. So:

- a response head is HPACK-encoded here (RFC 7541) with no dynamic table: static-table
  indexes where a name or a whole field is in the table, literals without indexing
  otherwise (6.2.2; never-indexed, 6.2.3, for Set-Cookie), strings without Huffman
  coding (5.2 lets the encoder choose). Each field's encoding is kept in a bounded
  table, so a hot hit's fields are encoded once and only Age, Cache-Status and Date
  are encoded per answer.
- HEADERS and DATA frames (RFC 9113 4.1) are written as bytes, and h2's stream and
  connection state machines and windows are moved exactly as its own `send_headers`
  and `send_data` would move them, so what the client sends next is still checked
  against the right state.
- A fresh in-memory hit (`edge.hotlane.HotLane.prepared_hit`) on a stream that ended
  with its head is answered inside `data_received`, without a task, a sink or a
  header dictionary: its head is encoded once per prepared entry. So is a small
  object the memory tier does not hold and the store reads without waiting (a
  disk hit), its head encoded for that answer alone.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import h2.connection
import h2.stream
from hpack.table import HeaderTable

from edge.front.h1_wire import DateClock
from edge.front.h2_stream import CONNECTION_FIELDS
from edge.front.types import RequestHead

if TYPE_CHECKING:
    from edge.front.h2_protocol import H2Protocol
    from edge.front.h2_stream import H2Stream
    from edge.hotlane import PreparedHit
    from edge.outcome import Outcome

    #: the hot lane's answer (edge.hotlane.HotLane.prepared_hit)
    FoundHit = tuple[PreparedHit, float, Outcome, str]

__all__ = ["FieldEncoder", "H2Hits", "data_frame", "headers_frame"]

#: RFC 9113 6.1, 6.2: frame types and flags
_DATA = 0x0
_HEADERS = 0x1
_CONTINUATION = 0x9
_END_STREAM = 0x1
_END_HEADERS = 0x4
_FRAME_HEAD = struct.Struct(">HBBBI")

#: encoded fields kept (a bound on memory: a field is a few dozen bytes)
FIELD_CACHE_ENTRIES = 20_000

#: encoded (Age, Cache-Status) pairs kept: those of the hits of the last few seconds
TAIL_CACHE_ENTRIES = 4096

_STATUS_NAME_INDEX = 8


def _static_tables() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    names: dict[str, int] = {}
    fields: dict[tuple[str, str], int] = {}
    for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
        key = name.decode("ascii")
        names.setdefault(key, index)
        fields.setdefault((key, value.decode("ascii")), index)
    return names, fields


#: RFC 7541 Appendix A: the static table's names and whole fields, by index
_STATIC_NAMES, _STATIC_FIELDS = _static_tables()

#: RFC 7541 7.1.3: a field an intermediary must never index; marked so on our side too
_NEVER_INDEXED = frozenset(("set-cookie", "authorization"))


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: an integer with an N-bit prefix, `first` holding the high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """RFC 7541 5.2: a string literal, not Huffman-coded."""
    return _integer(len(data), 7, 0x00) + data


def encode_field(name: str, value: str) -> bytes:
    """One field (its name lowercase) as HPACK, without touching any dynamic table."""
    whole = _STATIC_FIELDS.get((name, value))
    if whole is not None:
        # RFC 7541 6.1: indexed header field
        return _integer(whole, 7, 0x80)
    first = 0x10 if name in _NEVER_INDEXED else 0x00
    raw_value = _string(value.encode("utf-8", "surrogateescape"))
    index = _STATIC_NAMES.get(name)
    if index is not None:
        # RFC 7541 6.2.2 / 6.2.3: literal with an indexed name
        return _integer(index, 4, first) + raw_value
    return bytes((first,)) + _string(name.encode("latin-1")) + raw_value


class FieldEncoder:
    """HPACK encoding of response fields, each distinct field encoded once (bounded)."""

    __slots__ = ("_fields",)

    def __init__(self) -> None:
        self._fields: dict[tuple[str, str], bytes] = {}

    def field(self, name: str, value: str) -> bytes:
        """One field (name already lowercase)."""
        key = (name, value)
        encoded = self._fields.get(key)
        if encoded is None:
            encoded = encode_field(name, value)
            if len(self._fields) >= FIELD_CACHE_ENTRIES:
                self._fields.clear()
            self._fields[key] = encoded
        return encoded

    def status(self, status: int) -> bytes:
        """The `:status` pseudo-field (RFC 9113 8.3.2)."""
        return self.field(":status", str(status))

    def block(self, fields: Iterable[tuple[str, str]]) -> bytes:
        """A header block of `fields` (names lowercase, pseudo-fields first)."""
        field = self.field
        return b"".join([field(name, value) for name, value in fields])


def headers_frame(stream_id: int, block: bytes, max_size: int, *, end_stream: bool) -> bytes:
    """A header block as a HEADERS frame, and CONTINUATION frames after it when the
    block is larger than the peer's frame size (RFC 9113 4.3, 6.10)."""
    sid = stream_id & 0x7FFFFFFF
    end = _END_STREAM if end_stream else 0
    length = len(block)
    if length <= max_size:
        return _FRAME_HEAD.pack(length >> 8, length & 0xFF, _HEADERS, _END_HEADERS | end, sid) + (
            block
        )
    out = bytearray()
    for start in range(0, length, max_size):
        piece = block[start : start + max_size]
        size = len(piece)
        kind = _HEADERS if start == 0 else _CONTINUATION
        flags = (end if start == 0 else 0) | (_END_HEADERS if start + max_size >= length else 0)
        out += _FRAME_HEAD.pack(size >> 8, size & 0xFF, kind, flags, sid)
        out += piece
    return bytes(out)


def data_frame(stream_id: int, length: int, *, end_stream: bool) -> bytes:
    """The 9-byte head of a DATA frame of `length` bytes (the payload is written after)."""
    flags = _END_STREAM if end_stream else 0
    return _FRAME_HEAD.pack(length >> 8, length & 0xFF, _DATA, flags, stream_id & 0x7FFFFFFF)


def sent_headers(conn: h2.connection.H2Connection, stream_id: int, *, end_stream: bool) -> None:
    """Move h2's state machines as its `send_headers` would for a final response head
    (raises h2's ProtocolError on a stream that is gone, as it would)."""
    stream = conn._get_stream_by_id(stream_id)
    conn.state_machine.process_input(h2.connection.ConnectionInputs.SEND_HEADERS)
    stream.state_machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)
    if end_stream:
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)


def sent_data(
    conn: h2.connection.H2Connection, stream_id: int, length: int, *, end_stream: bool
) -> None:
    """Move h2's state machines and both outbound windows as its `send_data` would
    (the caller has checked the windows: RFC 9113 6.9.1)."""
    stream = conn._get_stream_by_id(stream_id)
    conn.state_machine.process_input(h2.connection.ConnectionInputs.SEND_DATA)
    stream.state_machine.process_input(h2.stream.StreamInputs.SEND_DATA)
    if end_stream:
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
    stream.outbound_flow_control_window -= length
    conn.outbound_flow_control_window -= length


def data_frames(stream_id: int, body: bytes, max_size: int) -> list[bytes | memoryview]:
    """A whole body as DATA frames of at most `max_size` bytes (RFC 9113 6.1, 4.2), the
    last one ending the stream; heads and views of the body, never a copy of it."""
    length = len(body)
    if length <= max_size:
        return [data_frame(stream_id, length, end_stream=True), body]
    view = memoryview(body)
    out: list[bytes | memoryview] = []
    for start in range(0, length, max_size):
        piece = view[start : start + max_size]
        out.append(data_frame(stream_id, len(piece), end_stream=start + max_size >= length))
        out.append(piece)
    return out


def send_window(conn: h2.connection.H2Connection, stream_id: int) -> int:
    """What may be sent on `stream_id` now: both windows and the peer's frame size."""
    stream = conn.streams.get(stream_id)
    if stream is None:
        return 0
    return min(
        stream.outbound_flow_control_window,
        conn.outbound_flow_control_window,
        conn.max_outbound_frame_size,
    )


class H2Hits:
    """A worker's HTTP/2 hit lane: encoded heads per prepared hit, and the answer."""

    def __init__(self) -> None:
        self.encoder = FieldEncoder()
        self.clock = DateClock()
        #: answers sent by the inbound lane, their streams never opened in h2
        self.lane_answers = 0
        #: (age, Cache-Status member) → their fields encoded
        self._tails: dict[tuple[int, str], bytes] = {}

    def head(self, prepared: PreparedHit) -> tuple[bytes, bool]:
        """A prepared hit's header block (`:status` to content-length), and whether it
        has its own Date."""
        # kept on the prepared hit itself ("h2"), so it goes when the hot lane drops
        # the hit (with its entry leaving the memory tier), never held beyond it
        found = prepared.heads.get("h2")
        if found is not None:
            return found
        fields = [(":status", str(prepared.status))]
        for name, value in prepared.headers.items():
            lower = name.lower()
            if lower not in CONNECTION_FIELDS and lower != "content-length":
                fields.append((lower, value))
        fields.append(("content-length", str(len(prepared.body))))
        block = self.encoder.block(fields)
        has_date = "Date" in prepared.headers
        prepared.heads["h2"] = (block, has_date)
        return block, has_date

    def answer(
        self,
        protocol: H2Protocol,
        stream: H2Stream,
        head: RequestHead,
        found: FoundHit | None = None,
        started: float | None = None,
    ) -> bool:
        """Answer a fresh in-memory hit on `stream` at once; False when the hot lane
        cannot (the engine then answers it). `found` is the hot lane's answer when the
        inbound lane has already looked it up (a hit is counted once)."""
        if started is None:
            started = time.time()
        if found is None:
            found = self.lookup(protocol, head)
            if found is None:
                return False
        prepared = found[0]
        block = self.answer_block(found, stream.hsts)
        protocol.send_prepared(stream, prepared.status, block, prepared.body)
        self.account(protocol, head, found, started)
        return True

    def lookup(self, protocol: H2Protocol, head: RequestHead) -> FoundHit | None:
        """The hot lane's answer to a GET that ended with its head, counted as a hit;
        None when the engine must answer it. An object on disk that the store reads
        without waiting is answered here too (`HotLane.prepared_hit(disk=True)`), as
        the HTTP/1.1 front does: over a large store most hits are that, and the
        answer is sent (or queued on its stream) at once, so what is prepared from
        an entry the memory tier does not hold lives no longer than this answer."""
        return protocol.engine.hot.prepared_hit(head, disk=True)

    def answer_block(self, found: FoundHit, hsts: str | None) -> bytes:
        """The whole header block of a hit's answer: the prepared head and the fields
        that change with every answer."""
        prepared, age, _, member = found
        block, has_date = self.head(prepared)
        # Age and Cache-Status change by the second: kept apart, in a small table
        key = (int(age), member)
        tail = self._tails.get(key)
        if tail is None:
            tail = encode_field("age", str(key[0])) + encode_field(
                "cache-status", f"{member}; proto=h2"
            )
            if len(self._tails) >= TAIL_CACHE_ENTRIES:
                self._tails.clear()
            self._tails[key] = tail
        if not has_date:
            tail += self.encoder.field("date", self.clock.date().decode("ascii"))
        if hsts is not None:
            tail += self.encoder.field("strict-transport-security", hsts)
        return block + tail

    def account(
        self, protocol: H2Protocol, head: RequestHead, found: FoundHit, started: float
    ) -> None:
        """Count and log an answered hit, as every front does."""
        prepared, _, outcome, _ = found
        elapsed = time.time() - started
        protocol.metrics.hit_seconds.observe(elapsed)
        headers = head.headers
        protocol.metrics.responded(headers.get("Host"), prepared.status)
        log_ = protocol.access_log
        if log_ is not None:
            # the same fields as every front's (edge.accesslog.RECORD); the client's
            # X-Request-ID as sent, checked (or replaced) when the line is written
            log_.record(
                (
                    started,
                    "GET",
                    headers.get("Host"),
                    head.target,
                    prepared.status,
                    outcome,
                    len(prepared.body),
                    elapsed,
                    head.peer,
                    "h2",
                    headers.get("User-Agent"),
                    headers.get("Referer"),
                    headers.get("X-Request-ID"),
                )
            )
