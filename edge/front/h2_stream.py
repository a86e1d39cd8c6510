"""An HTTP/2 request stream's state and its two faces to the engine: the request body as
a `BodyStream` (windows given back as it is read) and a `ResponseSink` onto the stream;
both leave the framing and flow control to the connection (`h2_protocol.py`, its
sending side `h2_sending.py`). Also
the connection's limits (`H2Limits`) and the h2 connection configured to them."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.settings
from multidict import CIMultiDict

if TYPE_CHECKING:
    from edge.front.h2_protocol import H2Protocol

#: unsent response bytes a stream may hold before its writer waits
HIGH_WATER = 256 * 1024

#: RFC 9113 8.2.2: fields that are connection-specific in HTTP/1.1 and malformed in h2
CONNECTION_FIELDS = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
)


@dataclass(frozen=True)
class H2Limits:
    """The bounds of one HTTP/2 connection."""

    #: nginx's http2_max_concurrent_streams default is 128; 100 is RFC 9113 6.5.2's
    #: recommended minimum, enough for a page's assets
    max_concurrent_streams: int = 100
    #: nginx's large_client_header_buffers total is 32 KiB; twice that here
    max_header_list_size: int = 64 * 1024
    #: the per-stream receive window (also the connection's)
    initial_window_size: int = 65535
    #: client resets tolerated per `reset_window` seconds before GOAWAY
    reset_limit: int = 200
    reset_window: float = 10.0
    #: seconds a connection with no open stream is kept
    idle_timeout: float = 20.0


class H2Stream:
    """One request stream: its body queue and the response bytes not yet sent."""

    __slots__ = (
        "body",
        "body_ended",
        "body_unread",
        "ended",
        "ending",
        "hsts",
        "id",
        "pending",
        "pending_bytes",
        "reset",
        "sent_bytes",
        "status",
        "task",
        "waiter",
    )

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.body: collections.deque[tuple[bytes, int]] = collections.deque()
        self.body_ended = False
        self.body_unread = 0
        # views: a whole answer is sent from its one bytes object, never copied whole
        self.pending: collections.deque[memoryview] = collections.deque()
        self.pending_bytes = 0
        self.ending = False
        #: END_STREAM sent
        self.ended = False
        self.reset = False
        self.sent_bytes = 0
        self.status = 0
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.hsts: str | None = None

    def wake(self) -> None:
        """Wake the task waiting on this stream (data, window, reset, drain)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class H2Body:
    """A stream's request body as a `BodyStream`: windows given back as it is read."""

    __slots__ = ("_length", "_protocol", "_stream", "exists")

    def __init__(
        self, protocol: H2Protocol, stream: H2Stream, exists: bool, length: int | None
    ) -> None:
        self._protocol = protocol
        self._stream = stream
        self.exists = exists
        self._length = length

    @property
    def length(self) -> int | None:
        """The declared content-length, if any."""
        return self._length

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        stream = self._stream
        while True:
            while stream.body:
                data, flow = stream.body.popleft()
                stream.body_unread -= flow
                self._protocol.acknowledge(stream, flow)
                yield data
            if stream.body_ended:
                return
            if stream.reset:
                raise ConnectionResetError("the client reset the stream")
            await self._protocol.wait(stream)


class H2Sink:
    """A `ResponseSink` onto one stream."""

    __slots__ = ("_protocol", "_stream", "started")

    def __init__(self, protocol: H2Protocol, stream: H2Stream) -> None:
        self._protocol = protocol
        self._stream = stream
        self.started = False

    def send(
        self,
        status: int,
        headers: CIMultiDict[str],
        body: bytes | None = None,
        *,
        close: bool = False,
    ) -> None:
        """A whole answer: the head now, the body as the windows allow."""
        self.started = True
        protocol = self._protocol
        protocol.send_head(self._stream, status, headers, end=not body)
        if body:
            protocol.queue(self._stream, body, end=True)
        if close:
            protocol.goaway(h2.errors.ErrorCodes.NO_ERROR)

    async def start(self, status: int, headers: CIMultiDict[str]) -> None:
        """Send the head of a streamed answer."""
        self.started = True
        self._protocol.send_head(self._stream, status, headers, end=False)

    async def write(self, chunk: bytes) -> None:
        """Queue body bytes; wait while the stream holds too many unsent."""
        if chunk:
            await self._protocol.write(self._stream, chunk)

    async def end(self) -> None:
        """The answer is complete (END_STREAM after the last byte)."""
        self._protocol.queue(self._stream, b"", end=True)

    def abort(self) -> None:
        """Reset the stream: the client sees the answer cut, never short and whole."""
        self._protocol.reset(self._stream, h2.errors.ErrorCodes.INTERNAL_ERROR)

    def informational(self, status: int, headers: CIMultiDict[str]) -> None:
        """A 1xx head (103 Early Hints) ahead of the final one (RFC 9113 8.1); none
        once the final head has been sent."""
        if not self.started:
            self._protocol.send_informational(self._stream, status, headers)


def server_connection() -> h2.connection.H2Connection:
    """A server-side h2 connection as our protocol drives it."""
    return h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # our answers' fields are lowercased and stripped of connection
            # fields in send_head; h2 checking them again costs every answer
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )


def start_connection(conn: h2.connection.H2Connection, limits: H2Limits) -> None:
    """Announce our SETTINGS (RFC 9113 6.5.2) and bound the header decoder to them."""
    conn.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        },
    )
    conn.initiate_connection()
    # the decoder refuses a header block that decodes larger than we announced,
    # before the peer has acknowledged our SETTINGS
    conn.decoder.max_header_list_size = limits.max_header_list_size
    conn.decoder.max_allowed_table_size = conn.local_settings.header_table_size
    # answers are encoded without a dynamic table (RFC 7541 4.2 lets the encoder
    # use less than the peer allows): the library searches that table linearly for
    # every field of every answer, which costs more than the bytes it saves here
    conn.encoder.header_table_size = 0
