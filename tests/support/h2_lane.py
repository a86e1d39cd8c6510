"""Frames written by hand for tests of the HTTP/2 inbound lane (edge/front/h2_inbound.py).

A well-behaved `h2` client refuses to send what these tests need to send (a stream id
it has used, a RST_STREAM on a stream it sees as closed, a CONTINUATION after a
complete header block, a frame past the peer's size), so the frames are built here as
bytes (RFC 9113 4.1) and written past the client's state machine; the client's
connection still reads what the edge answers. Header blocks are HPACK (RFC 7541)
built field by field, so a test says exactly which representation it sends.
"""

from __future__ import annotations

import contextlib
import struct

import h2.connection
import h2.events
import h2.stream
from hpack.hpack import encode_integer

from tests.support.tls_fleet import H2Answer, H2Client

HEADERS = 0x1
RST_STREAM = 0x3
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
END_STREAM = 0x1
END_HEADERS = 0x4
PRIORITY = 0x20

#: RFC 7541 Appendix A: the static table's indexes a request uses
METHOD_GET = 2
SCHEME_HTTPS = 7
AUTHORITY_NAME = 1
PATH_NAME = 4


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One frame: the 9-byte head (RFC 9113 4.1) and its payload."""
    length = len(payload)
    head = struct.pack(">HBBBI", length >> 8, length & 0xFF, kind, flags, stream_id)
    return head + payload


def integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: an integer with an N-bit prefix, `first` holding the high bits
    (the hpack library's encoder: not the edge's own, which it checks)."""
    out = encode_integer(value, prefix_bits)
    out[0] |= first
    return bytes(out)


def string(data: bytes) -> bytes:
    """RFC 7541 5.2: a string literal, not Huffman-coded."""
    return integer(len(data), 7, 0) + data


def indexed(index: int) -> bytes:
    """RFC 7541 6.1: a field from the static or dynamic table."""
    return integer(index, 7, 0x80)


def literal(name_index: int, value: bytes, *, index: bool = False) -> bytes:
    """RFC 7541 6.2.1 / 6.2.2: a literal value with an indexed name, added to the
    dynamic table when `index`."""
    if index:
        return integer(name_index, 6, 0x40) + string(value)
    return integer(name_index, 4, 0x00) + string(value)


def literal_name(name: bytes, value: bytes, *, index: bool = False) -> bytes:
    """RFC 7541 6.2.1 / 6.2.2: a literal field with a literal name."""
    return bytes((0x40 if index else 0x00,)) + string(name) + string(value)


def table_size(size: int) -> bytes:
    """RFC 7541 6.3: a dynamic table size update."""
    return integer(size, 5, 0x20)


def request_block(authority: str, path: str, *extra: bytes) -> bytes:
    """A GET's header block: static :method and :scheme, literal :authority and :path
    (never indexed into the dynamic table), then `extra` representations."""
    return (
        indexed(METHOD_GET)
        + indexed(SCHEME_HTTPS)
        + literal(AUTHORITY_NAME, authority.encode())
        + literal(PATH_NAME, path.encode())
        + b"".join(extra)
    )


def send_raw(client: H2Client, *frames: bytes) -> None:
    """Write frames past the client's own state machine."""
    client.writer.write(b"".join(frames))


def open_by_hand(client: H2Client, stream_id: int) -> None:
    """Tell the client's h2 that a request went out by hand on `stream_id` (its head
    with END_STREAM), so that it reads the answer and takes a higher id next."""
    conn = client.conn
    stream = conn._begin_new_stream(stream_id, h2.connection.AllowedStreamIDs.ODD)
    conn.state_machine.process_input(h2.connection.ConnectionInputs.SEND_HEADERS)
    stream.state_machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)
    stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)


def next_id(client: H2Client) -> int:
    """The client's next stream id, opened by hand."""
    stream_id = client.conn.get_next_available_stream_id()
    open_by_hand(client, stream_id)
    return stream_id


async def answer_of(client: H2Client, stream_id: int) -> H2Answer:
    """Read until stream `stream_id` (opened by hand) is answered whole."""
    return (await answers_of(client, [stream_id]))[stream_id]


async def answers_of(client: H2Client, stream_ids: list[int]) -> dict[int, H2Answer]:
    """Read until every stream of `stream_ids` (opened by hand) is answered whole."""
    heads: dict[int, dict[str, str]] = {}
    bodies: dict[int, bytearray] = {n: bytearray() for n in stream_ids}
    answers: dict[int, H2Answer] = {}
    while len(answers) < len(stream_ids):
        for event in await client.events():
            stream_id = getattr(event, "stream_id", None)
            if stream_id not in bodies:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                heads[stream_id] = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h2.events.DataReceived):
                bodies[stream_id] += event.data
                client.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                client.writer.write(client.conn.data_to_send())
            elif isinstance(event, h2.events.StreamEnded):
                head = heads[stream_id]
                answers[stream_id] = H2Answer(
                    int(head[":status"]), head, bytes(bodies[stream_id]), ()
                )
            elif isinstance(event, h2.events.StreamReset):
                raise ConnectionResetError(f"stream reset: {event.error_code}")
        if client.goaway is not None and len(answers) < len(stream_ids):
            raise ConnectionResetError(f"GOAWAY {client.goaway.error_code}")
    return answers


async def refusal(client: H2Client) -> tuple[set[int], int | None]:
    """Read until the edge ends the connection: the streams it answered (a head) on
    the way and the GOAWAY's error code (None: closed without one)."""
    answered: set[int] = set()
    with contextlib.suppress(ConnectionResetError):
        while client.goaway is None:
            for event in await client.events():
                if isinstance(event, h2.events.ResponseReceived):
                    answered.add(event.stream_id)
    if client.goaway is None:
        return answered, None
    return answered, int(client.goaway.error_code)
