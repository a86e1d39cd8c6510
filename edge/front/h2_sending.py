"""HTTP/2's sending side: the part of `H2Protocol` that writes to the client.

`H2Sending` is the base class the connection (edge/front/h2_protocol.py) extends; it
holds everything that leaves: request windows given back as the engine reads, heads
(1xx, final, and the hit lane's prepared ones), DATA as the client's windows allow,
stream resets, GOAWAY, and the out-buffer all of it goes through. What it bounds,
and why:

- Flow control (RFC 9113 5.2): a response is sent no faster than the client's
  windows allow, and a writer waits while its stream holds more than `HIGH_WATER`
  unsent bytes or the transport is paused, so a slow reader costs a window, not the
  object.
- The out-buffer: frames queued in one turn of the event loop leave in one write
  (one TLS record where they fit), but past `HIGH_WATER` body bytes they are written
  at once, so a turn of thousands of small answers is not gathered in memory.

It is a base class, not an object the connection holds, so a frame sent costs no
more than it did as one class: no extra call or attribute hop per frame or request.
The connection's state it works on is declared here and set by `H2Protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib

import h2.connection
import h2.errors
import h2.exceptions
from multidict import CIMultiDict

from edge.front.h2_hits import (
    H2Hits,
    data_frame,
    headers_frame,
    send_window,
    sent_data,
    sent_headers,
)
from edge.front.h2_stream import CONNECTION_FIELDS, HIGH_WATER, H2Stream
from edge.metrics import NodeMetrics

__all__ = ["H2Sending"]


class H2Sending(asyncio.Protocol):
    """The sending half of one HTTP/2 connection (`H2Protocol` is the whole)."""

    #: the prepared-answer cache and the response-head encoder (edge/front/h2_hits.py)
    hits: H2Hits
    #: GOAWAYs sent for an error are counted (`h2_goaways`)
    metrics: NodeMetrics
    _conn: h2.connection.H2Connection
    _transport: asyncio.Transport | None
    _loop: asyncio.AbstractEventLoop
    _streams: dict[int, H2Stream]
    #: the transport's buffer is full: nothing more is queued to it
    _paused: bool
    _closed: bool
    #: a `_send_now` is scheduled for the end of this turn of the event loop
    _send_scheduled: bool
    #: frames we framed ourselves, after whatever h2 had to send before them
    _out: list[bytes | memoryview]
    #: body bytes in `_out`: past HIGH_WATER they are written at once, so a turn
    #: with thousands of small requests cannot gather their answers in memory
    #: (the transport then pauses us, and answers wait on their streams)
    _out_bytes: int

    def _forget_if_done(self, stream: H2Stream) -> None:
        """Forget `stream` once its work and its answer are done (the connection's)."""
        raise NotImplementedError

    # -- the transport's backpressure --------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer is full: writers wait."""
        self._paused = True

    def resume_writing(self) -> None:
        """The transport drained: wake the writers."""
        self._paused = False
        for stream in list(self._streams.values()):
            self._flush(stream)
            stream.wake()
            self._forget_if_done(stream)
        self._send()

    # -- GOAWAY ------------------------------------------------------------------

    def _close(self) -> None:
        if self._transport is not None and not self._closed:
            self._send_now()
            self._transport.close()
        self._closed = True

    def goaway(self, code: h2.errors.ErrorCodes) -> None:
        """Send GOAWAY with `code` and close once it is written."""
        if self._closed:
            return
        if code != h2.errors.ErrorCodes.NO_ERROR:
            self.metrics.h2_goaways.inc()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.close_connection(error_code=code)
        self._close()

    # -- request windows given back, waits ---------------------------------------

    def acknowledge(self, stream: H2Stream, flow: int) -> None:
        """Give back `flow` bytes of window (the engine read them)."""
        if flow and not self._closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.acknowledge_received_data(flow, stream.id)
            self._send()

    async def wait(self, stream: H2Stream) -> None:
        """Wait until something happens to `stream` (data, window, reset, drain)."""
        waiter = self._loop.create_future()
        stream.waiter = waiter
        try:
            await waiter
        finally:
            stream.waiter = None

    # -- responses ---------------------------------------------------------------

    def send_informational(self, stream: H2Stream, status: int, headers: CIMultiDict[str]) -> None:
        """Send a 1xx head on a stream whose final head is still to come (a gone
        stream gets nothing: the final answer will find it gone)."""
        if stream.reset or self._closed:
            return
        fields = [(":status", str(status))]
        fields += [(n.lower(), v) for n, v in headers.items() if n.lower() not in CONNECTION_FIELDS]
        try:
            self._conn.send_headers(stream.id, fields, end_stream=False)
        except h2.exceptions.ProtocolError:
            return
        self._send()

    def send_head(
        self, stream: H2Stream, status: int, headers: CIMultiDict[str], *, end: bool
    ) -> None:
        """Send a response head (connection-specific fields dropped, RFC 9113 8.2.2)."""
        if stream.reset or self._closed:
            raise ConnectionResetError("the stream is gone")
        fields: list[tuple[str, str]] = [(":status", str(status))]
        for name, value in headers.items():
            lower = name.lower()
            if lower in CONNECTION_FIELDS:
                continue
            if lower == "cache-status":
                # this node's member is the last: say which protocol served it
                value = f"{value}; proto=h2"
            fields.append((lower, value))
        if stream.hsts is not None:
            fields.append(("strict-transport-security", stream.hsts))
        stream.status = status
        if not self._head(stream, self.hits.encoder.block(fields), end=end):
            raise ConnectionResetError("the stream is gone")
        self._send()
        if end:
            self._forget_if_done(stream)

    def _head(self, stream: H2Stream, block: bytes, *, end: bool) -> bool:
        """Frame and queue a final head's encoded block; False if the stream is gone."""
        conn = self._conn
        try:
            sent_headers(conn, stream.id, end_stream=end)
        except h2.exceptions.ProtocolError:
            stream.reset = True
            return False
        self._emit(headers_frame(stream.id, block, conn.max_outbound_frame_size, end_stream=end))
        if end:
            stream.ending = stream.ended = True
        return True

    def send_prepared(self, stream: H2Stream, status: int, block: bytes, body: bytes) -> None:
        """A whole answer whose head is already encoded (the hit lane): the body in
        the same write when the windows take all of it, else queued as they allow.
        While the transport is paused the body is queued too: a queued answer keeps
        its stream open, so a client that does not read is held to
        `max_concurrent_streams` unsent answers."""
        stream.status = status
        if not body:
            self._head(stream, block, end=True)
        elif not self._paused and len(body) <= send_window(self._conn, stream.id):
            if self._head(stream, block, end=False):
                sent_data(self._conn, stream.id, len(body), end_stream=True)
                self._emit(data_frame(stream.id, len(body), end_stream=True), body)
                stream.sent_bytes = len(body)
                stream.ending = stream.ended = True
                self._out_bytes += len(body)
                if self._out_bytes > HIGH_WATER:
                    self._send_now()
        elif self._head(stream, block, end=False):
            self.queue(stream, body, end=True)
            return
        self._send()

    def queue(self, stream: H2Stream, data: bytes, *, end: bool) -> None:
        """Queue body bytes (and the end) to be sent as the windows allow."""
        if stream.reset or self._closed:
            return
        if data:
            stream.pending.append(memoryview(data))
            stream.pending_bytes += len(data)
        if end:
            stream.ending = True
        self._flush(stream)
        self._send()
        self._forget_if_done(stream)

    async def write(self, stream: H2Stream, data: bytes) -> None:
        """Queue body bytes; wait while too many are unsent or the transport is full."""
        if stream.reset or self._closed:
            raise ConnectionResetError("the stream is gone")
        self.queue(stream, data, end=False)
        while stream.pending_bytes > HIGH_WATER or self._paused:
            await self.wait(stream)
            if stream.reset or self._closed:
                raise ConnectionResetError("the stream is gone")

    def _flush(self, stream: H2Stream) -> None:
        """Send what the stream's and the connection's windows allow."""
        conn = self._conn
        try:
            while stream.pending and not self._paused:
                window = send_window(conn, stream.id)
                if window <= 0:
                    return
                chunk = stream.pending[0]
                if len(chunk) > window:
                    stream.pending[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    stream.pending.popleft()
                size = len(chunk)
                stream.pending_bytes -= size
                stream.sent_bytes += size
                last = stream.ending and not stream.pending
                # framed here, not by h2's send_data: no copy of the chunk, no frame
                # object; h2's windows and states move as its send_data moves them
                sent_data(conn, stream.id, size, end_stream=last)
                self._emit(data_frame(stream.id, size, end_stream=last), chunk)
                if last:
                    stream.ended = True
            if stream.ending and not stream.pending and not stream.ended:
                stream.ended = True
                conn.end_stream(stream.id)
        except h2.exceptions.ProtocolError:
            # the stream was closed under us (a reset): nothing more to send there
            stream.reset = True
            stream.pending.clear()
            stream.pending_bytes = 0
        finally:
            if stream.pending_bytes <= HIGH_WATER:
                stream.wake()

    def _window(self, stream_id: int) -> None:
        if stream_id:
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._flush(stream)
                self._forget_if_done(stream)
            return
        for stream in list(self._streams.values()):
            self._flush(stream)
            self._forget_if_done(stream)

    def reset(self, stream: H2Stream, code: h2.errors.ErrorCodes) -> None:
        """Reset one stream (the answer was cut)."""
        if stream.reset or self._closed:
            return
        stream.reset = True
        stream.pending.clear()
        stream.pending_bytes = 0
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._conn.reset_stream(stream.id, error_code=code)
        self._send()

    def _sendable(self, length: int) -> bool:
        """Whether an answer of `length` bytes leaves whole now: the transport takes
        writes and a new stream's window and the connection's both hold it."""
        conn = self._conn
        return (
            not self._paused
            and length <= conn.outbound_flow_control_window
            and length <= conn.remote_settings.initial_window_size
        )

    def _send(self) -> None:
        """Write what h2 has for the peer, soon: answers finished in the same turn of
        the event loop leave in one write (one TLS record where they fit)."""
        if not self._send_scheduled:
            self._send_scheduled = True
            self._loop.call_soon(self._send_now)

    def _send_now(self) -> None:
        self._send_scheduled = False
        out = self._out
        data = self._conn.data_to_send()
        if data:
            out.append(data)
        if not out:
            return
        self._out = []
        self._out_bytes = 0
        if self._transport is not None and not self._closed:
            # one write of the joined frames: the TLS transport makes a record of
            # each buffer it is given, so a head, a frame header and a small body
            # written apart would cost three records and three encryptions
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _emit(self, *frames: bytes | memoryview) -> None:
        """Queue frames framed here, in order after what h2 has queued so far."""
        data = self._conn.data_to_send()
        if data:
            self._out.append(data)
        self._out.extend(frames)
