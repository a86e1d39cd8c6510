"""HTTP/2's inbound lane: the common request read without the `h2` library's machinery.

Almost every request a browser or load generator sends is one HEADERS frame with
END_HEADERS and END_STREAM on a new stream (a GET), and almost every answer to it at
an edge is a fresh hit. `h2` spends most of a connection's CPU on such a request (a
frame object, header validation in chained generators, a stream object and its state
machine, events, the `repr` of every frame for a debug log nobody reads) before the
hit lane writes the answer in a few microseconds. So `H2Protocol.data_received`
frames what the client sends itself (RFC 9113 4.1: a 9-byte head, the payload) and:

- a HEADERS frame that is lane-eligible (`is_lane_headers`: END_HEADERS and
  END_STREAM, not padded, a new odd stream id above every earlier one, a PRIORITY
  block tolerated) has its block decoded with the connection's own HPACK decoder
  (`decode_block`, so the dynamic table stays in step and the header-list bound
  holds); if the fields are a plain request (`is_plain_request`: checked at least as
  strictly as `h2` checks them) and the hit lane can answer it whole at once, it is
  answered and the stream is closed, never having existed in `h2`'s tables beyond
  its highest stream id. Anything short of that becomes an `h2` stream with the
  decoded fields (`open_stream`), exactly as `h2` would have made it: its checks
  (which raise on a malformed request), its concurrency limit, its events.
- a RST_STREAM on a stream `h2` no longer holds (the lane's streams among them) is
  ignored, as RFC 9113 5.1 says and as `h2` itself would, but counted toward the
  rapid-reset limit: `h2` reports no event for it, and HEADERS then RST_STREAM on
  streams the lane answers is the CVE-2023-44487 pattern all the same.
- every other frame goes to `h2` unchanged, in the order received, whole frames
  only, so its frame buffer never holds a frame the lane has taken.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import h2.connection
import h2.exceptions
import h2.stream
from h2.events import Event

from edge.front.types import RequestHead

__all__ = [
    "PREFACE_LENGTH",
    "LaneHeads",
    "frame_length",
    "header_block",
    "is_lane_headers",
    "is_plain_request",
    "open_stream",
    "opened_here",
]

#: RFC 9113 3.4: the client connection preface, which `h2` checks
PREFACE_LENGTH = 24
#: RFC 9113 6: frame types the lane reads
HEADERS = 0x1
RST_STREAM = 0x3
#: RFC 9113 6.2: HEADERS flags
_END_STREAM = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY = 0x20

#: RFC 9113 8.2.1 / RFC 9110 5.1: a field name as the lane takes it (a token, lowercase);
#: anything else (legal or not) goes to `h2`'s own checks
_NAME = re.compile(rb"[a-z0-9!#$%&'*+\-.^_`|~]+\Z")
#: RFC 9113 8.2.1: a value must not hold NUL, CR or LF, nor start or end with SP or HTAB
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
#: fields the lane leaves to `h2`: connection-specific ones (RFC 9113 8.2.2, malformed
#: in h2), TE (8.2.2 allows "trailers" only), Host (8.3.1: must match :authority),
#: Content-Length (a GET with a declared body is not the common case)
_NOT_PLAIN = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"host",
        b"content-length",
    )
)
#: RFC 9113 8.3.1: a request's pseudo-fields; the lane wants each exactly once
_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))


#: connection states in which h2 takes a new stream (IDLE: none has been opened yet)
_OPEN = frozenset((h2.connection.ConnectionState.IDLE, h2.connection.ConnectionState.SERVER_OPEN))


def opened_here(conn: h2.connection.H2Connection, stream_id: int) -> None:
    """Tell h2 a stream was opened (and closed) by the lane: the highest id, so that
    a lower or reused one is still refused (RFC 9113 5.1.1), and the connection's
    state machine, which leaves IDLE with the first stream."""
    conn.highest_inbound_stream_id = stream_id
    if conn.state_machine.state is not h2.connection.ConnectionState.SERVER_OPEN:
        conn.state_machine.process_input(h2.connection.ConnectionInputs.RECV_HEADERS)


def frame_length(data: bytes, pos: int) -> int:
    """The payload length of the frame whose head starts at `pos` (RFC 9113 4.1)."""
    return (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]


def is_lane_headers(conn: h2.connection.H2Connection, flags: int, stream_id: int) -> bool:
    """Whether a HEADERS frame may take the lane: a whole request head with no body
    on a new client stream, on an open connection with no header block pending."""
    return (
        flags & (_END_STREAM | _END_HEADERS | _PADDED) == _END_STREAM | _END_HEADERS
        # RFC 9113 5.1.1: a new stream's id is odd and above every earlier one (a
        # lower or reused one is h2's to refuse)
        and stream_id & 1 == 1
        and stream_id > conn.highest_inbound_stream_id
        and conn.state_machine.state in _OPEN
        # RFC 9113 6.10: a header block still open wants CONTINUATION, not HEADERS
        and not conn.incoming_buffer._headers_buffer
    )


def header_block(data: bytes, pos: int, end: int, flags: int, stream_id: int) -> bytes | None:
    """The header block of a lane-eligible HEADERS frame at `pos`; None when its
    PRIORITY part is malformed (h2 then refuses the frame itself)."""
    start = pos + 9
    if flags & _PRIORITY:
        # RFC 9113 6.2: 4 bytes of stream dependency, 1 of weight; RFC 9113 5.3.1:
        # a stream cannot depend on itself
        if end - start < 5:
            return None
        depends_on = int.from_bytes(data[start : start + 4], "big") & 0x7FFFFFFF
        if depends_on == stream_id:
            return None
        start += 5
    return data[start:end]


class LaneHeads:
    """One connection's decoded header blocks that left its HPACK table unchanged,
    with the request each is (None: not a plain request), so a block seen again is
    neither decoded nor checked again.

    A block's meaning depends on the dynamic table (RFC 7541 2.3.2), so an entry is
    used only while the table is as it was when the block was decoded: the same
    newest entry (by identity: every insertion makes a new one, and the cache keeps
    this one alive), the same number of entries and the same size limit. A block
    that inserted or resized is never kept, since replaying it must move the table.
    Load generators and browsers repeat whole blocks (all fields indexed, :path a
    literal without indexing, RFC 7541 6.2.2), so most requests are one lookup."""

    __slots__ = ("_blocks", "_decoder", "_make")

    #: blocks kept per connection (a page's assets are a few dozen)
    ENTRIES = 64

    def __init__(
        self,
        conn: h2.connection.H2Connection,
        make: Callable[[list[tuple[bytes, bytes]]], RequestHead],
    ) -> None:
        self._decoder = conn.decoder
        self._make = make
        self._blocks: dict[
            bytes,
            tuple[object, int, int, list[tuple[bytes, bytes]], RequestHead | None],
        ] = {}

    def request(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], RequestHead | None]:
        """The decoded fields of `block` and the plain request they are, if they are."""
        table = self._decoder.header_table
        entries = table.dynamic_entries
        newest = entries[0] if entries else None
        count = len(entries)
        limit = table.maxsize
        known = self._blocks.get(block)
        if known is not None and known[0] is newest and known[1] == count and known[2] == limit:
            return known[3], known[4]
        fields = list(h2.connection._decode_headers(self._decoder, block))
        head = self._make(fields) if is_plain_request(fields) else None
        entries = table.dynamic_entries
        if (
            (entries[0] if entries else None) is newest
            and len(entries) == count
            and table.maxsize == limit
        ):
            if len(self._blocks) >= self.ENTRIES:
                self._blocks.clear()
            self._blocks[block] = (newest, count, limit, fields, head)
        return fields, head


def is_plain_request(fields: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether decoded fields are a request the lane may take: pseudo-fields first,
    :method, :scheme, :path and :authority each once and nothing else, :path absolute;
    then lowercase token names, none connection-specific, values without NUL, CR, LF
    or surrounding whitespace (RFC 9113 8.2.1, 8.2.2, 8.3.1). False is no verdict:
    `h2` then checks the fields itself and refuses what is malformed."""
    seen: set[bytes] = set()
    regular = False
    for name, value in fields:
        if name[:1] == b":":
            # RFC 9113 8.3: pseudo-fields precede regular ones, each at most once
            if regular or name not in _PSEUDO or name in seen:
                return False
            seen.add(name)
        else:
            regular = True
            if name in _NOT_PLAIN or _NAME.match(name) is None:
                return False
        if value and _BAD_VALUE.search(value) is not None:
            return False
    if len(seen) != 4:
        return False
    for name, value in fields:
        if name == b":path":
            return value[:1] == b"/"
    return False


def open_stream(
    conn: h2.connection.H2Connection, stream_id: int, fields: list[tuple[bytes, bytes]]
) -> list[Event]:
    """Make `stream_id` an h2 stream from its decoded fields, as h2's own reading of
    the HEADERS frame would after decoding (h2.connection._receive_headers_frame):
    the concurrency limit (RFC 9113 5.1.2), the connection and stream state machines,
    h2's checks of the fields; returns its events (RequestReceived, StreamEnded)."""
    limit = conn.local_settings.max_concurrent_streams
    open_now = conn.open_inbound_streams
    if open_now + 1 > limit:
        raise h2.exceptions.TooManyStreamsError(f"Max inbound streams is {limit}, {open_now} open")
    events: list[Event] = conn.state_machine.process_input(
        h2.connection.ConnectionInputs.RECV_HEADERS
    )
    stream = conn._get_or_create_stream(stream_id, h2.connection.AllowedStreamIDs.ODD)
    frames, stream_events = stream.receive_headers(fields, True, conn.config.header_encoding)
    if frames:
        conn._prepare_for_sending(frames)
    return events + stream_events
