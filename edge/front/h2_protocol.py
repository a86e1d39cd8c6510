"""HTTP/2 on the `h2` library as an asyncio protocol: each stream is one engine request.

`H2Protocol` frames the client's bytes: a whole GET that is a fresh hit is answered
at once by the inbound lane (edge/front/h2_inbound.py), every other frame becomes h2
events; each request stream becomes our `RequestHead`, `BodyStream` and
`ResponseSink` (edge/front/types.py), and `Engine.handle` runs for it as a task; the
engine never sees h2's types. What it bounds, and why:

- Frames (RFC 9113 4.2): one over our SETTINGS_MAX_FRAME_SIZE is refused with
  FRAME_SIZE_ERROR as soon as its head arrives, never buffered.

- SETTINGS (RFC 9113 6.5.2): at most `max_concurrent_streams` streams at once and a
  header list of at most `max_header_list_size` bytes; h2 refuses an HPACK block that
  decodes larger (the HPACK-bomb class) and a dynamic table over our size.
- Flow control both ways (RFC 9113 5.2): a request body is acknowledged (its window
  given back) only as the engine reads it, so a client cannot make us hold more than
  a window per stream; a response is sent no faster than the client's windows allow
  (the sending side, `H2Sending` in h2_sending.py, which this class extends).
- Rapid reset (CVE-2023-44487): streams the client resets are counted in a sliding
  window; a client over `reset_limit` per `reset_window` seconds is sent GOAWAY
  (ENHANCE_YOUR_CALM) and the connection closed. Its streams' work is cancelled.
- A connection with no open stream for `idle_timeout` is sent GOAWAY and closed.

A stream's state, body and sink are `h2_stream.py`; a request's head and its run
through the engine are `h2_exchange.py`; what leaves (heads, DATA, resets, the
out-buffer) is `h2_sending.py`; this module is the connection and what arrives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from edge.accesslog import AccessLog
from edge.front.h2_exchange import request_head, serve_stream
from edge.front.h2_hits import (
    H2Hits,
    data_frames,
    headers_frame,
)
from edge.front.h2_inbound import (
    HEADERS,
    PREFACE_LENGTH,
    RST_STREAM,
    LaneHeads,
    frame_length,
    header_block,
    is_lane_headers,
    open_stream,
    opened_here,
)
from edge.front.h2_sending import H2Sending
from edge.front.h2_stream import (
    HIGH_WATER,
    H2Body,
    H2Limits,
    H2Stream,
    server_connection,
    start_connection,
)
from edge.front.https_policy import HttpsPolicy
from edge.front.types import RequestHead
from edge.limits import NO_HEAD, ConnectionLimits
from edge.metrics import NodeMetrics

if TYPE_CHECKING:
    from edge.engine import Engine
    from edge.front.h2_hits import FoundHit

__all__ = ["H2Limits", "H2Protocol", "h2_factory"]

log = logging.getLogger("edgeshield.h2")

#: the limits of a connection when the node's fleet.toml sets none
DEFAULT_LIMITS = H2Limits()


class H2Protocol(H2Sending):
    """One HTTP/2 connection (after ALPN chose h2 on a TLS listener)."""

    def __init__(
        self,
        engine: Engine,
        *,
        metrics: NodeMetrics,
        access_log: AccessLog | None = None,
        limits: ConnectionLimits | None = None,
        h2_limits: H2Limits = DEFAULT_LIMITS,
        scheme: str = "https",
        https: HttpsPolicy | None = None,
        hits: H2Hits | None = None,
    ) -> None:
        self.engine = engine
        self.hits = hits if hits is not None else H2Hits()
        self.https = https if https is not None and https.active else None
        self.metrics = metrics
        self.access_log = access_log
        self.limits = limits
        self.settings = h2_limits
        self.scheme = scheme
        self.head_since = NO_HEAD
        #: never idle to the limits' sweep: an h2 connection keeps its own idle timer
        self.idle_since = NO_HEAD
        self._conn = server_connection()
        self._transport = None
        self._streams = {}
        self._paused = False
        self._closed = False
        self._refused = False
        self._peer: str | None = None
        self._resets: collections.deque[float] = collections.deque()
        self._idle: asyncio.TimerHandle | None = None
        self._send_scheduled = False
        self._out = []
        self._out_bytes = 0
        self._loop = asyncio.get_event_loop()
        #: bytes of the client preface still to come (h2 checks them)
        self._preface = PREFACE_LENGTH
        #: the start of a frame not yet whole (edge/front/h2_inbound.py)
        self._partial = bytearray()
        #: the bytes `_partial` must hold before a whole frame can be read from it
        self._partial_needs = 0
        #: the client's first SETTINGS has been read (RFC 9113 3.4): the lane may start
        self._settled = False
        self._lane_heads = LaneHeads(self._conn, self._lane_head)

    # -- connection --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit (or refuse over the cap), send our SETTINGS."""
        # uvloop's TLS transport is not an asyncio.Transport subclass, but is one
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        if self.limits is not None and not self.limits.admit(self):
            self._refused = True
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else None
        start_connection(self._conn, self.settings)
        self._send()
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel every stream's work."""
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
        if self._refused:
            return
        if self.limits is not None:
            self.limits.closed(self)
        for stream in self._streams.values():
            stream.reset = True
            stream.wake()
            if stream.task is not None:
                stream.task.cancel()
        self._streams.clear()

    def close_for_head_timeout(self) -> None:
        """Close at once (the limits' sweep; an h2 connection never stamps a head)."""
        self._close()

    def close_for_idle(self) -> None:
        """Say GOAWAY and close (the limits' sweep never calls it: see idle_since)."""
        self.goaway(h2.errors.ErrorCodes.NO_ERROR)

    def data_received(self, data: bytes) -> None:
        """Frame what the client sent: lane-eligible requests answered here, every
        other frame through h2, in order (edge/front/h2_inbound.py)."""
        try:
            self._receive(data)
        except h2.exceptions.ProtocolError as exc:
            code = getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
            log.info("h2 protocol error from %s: %s", self._peer, str(exc)[:100])
            self.goaway(code)
            return
        self._send_now()

    def _receive(self, data: bytes) -> None:
        if self._closed:
            return
        if self._preface:
            take = min(self._preface, len(data))
            self._preface -= take
            if not self._feed(data[:take]) or take == len(data):
                return
            data = data[take:]
        if self._partial:
            # appended, not joined anew per read: a frame sent a byte at a time
            # costs its length once, not its length squared
            self._partial += data
            if len(self._partial) < self._partial_needs:
                return
            data = bytes(self._partial)
            self._partial = bytearray()
        conn = self._conn
        size = len(data)
        pos = fed = 0
        lane = False
        while size - pos >= 9:
            length = frame_length(data, pos)
            if length > conn.max_inbound_frame_size:
                # RFC 9113 4.2: FRAME_SIZE_ERROR, said at once (h2 would first
                # buffer the whole payload, up to 16 MiB)
                raise h2.exceptions.FrameTooLargeError(
                    f"frame of {length} bytes over {conn.max_inbound_frame_size}"
                )
            end = pos + 9 + length
            if end > size:
                break
            kind = data[pos + 3]
            if kind in (HEADERS, RST_STREAM):
                if fed < pos and not self._feed(data[fed:pos]):
                    return
                fed = pos
                flags = data[pos + 4]
                stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                if kind == HEADERS:
                    if self._settled and is_lane_headers(conn, flags, stream_id):
                        block = header_block(data, pos, end, flags, stream_id)
                        if block is not None:
                            self._lane_request(stream_id, block)
                            lane = True
                            fed = end
                elif (
                    length == 4
                    and stream_id & 1
                    and stream_id <= conn.highest_inbound_stream_id
                    and stream_id not in conn.streams
                ):
                    # RFC 9113 5.1: a RST_STREAM on a closed stream is ignored (h2
                    # ignores it too, without an event); it still counts toward the
                    # rapid-reset limit, or HEADERS+RST_STREAM pairs answered by the
                    # lane would never reach it
                    self._reset_by_peer(stream_id)
                    fed = end
                if self._closed:
                    return
            pos = end
        if fed < pos and not self._feed(data[fed:pos]):
            return
        if pos < size:
            self._partial += memoryview(data)[pos:]
            self._partial_needs = 9 + frame_length(data, pos) if size - pos >= 9 else 9
        if lane and not self._streams:
            self._arm_idle()

    def _feed(self, data: bytes) -> bool:
        """Feed whole frames to h2; act on its events. False once the connection is
        closing."""
        if not data:
            return not self._closed
        self._events(self._conn.receive_data(data))
        return not self._closed

    def _events(self, events: list[h2.events.Event], found: FoundHit | None = None) -> None:
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request(event, found)
            elif isinstance(event, h2.events.DataReceived):
                self._data(event)
            elif isinstance(event, h2.events.StreamEnded):
                self._body_end(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self._reset_by_peer(event.stream_id)
                if self._closed:
                    return
            elif isinstance(event, h2.events.WindowUpdated):
                self._window(event.stream_id)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._settled = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._close()
                return

    def _lane_request(self, stream_id: int, block: bytes) -> None:
        """A whole request head on a new stream: a fresh hit sent whole is answered
        here and the stream closed; anything else becomes an h2 stream."""
        started = time.time()
        conn = self._conn
        # decoded with the connection's HPACK decoder: its dynamic table stays in
        # step, and a block over our header-list bound is refused (an HPACK bomb)
        fields, head = self._lane_heads.request(block)
        found: FoundHit | None = None
        if (
            head is not None
            and head.method == "GET"
            and (not self.engine.traffic.active or self.engine.traffic.passes(head))
        ):
            found = self.hits.lookup(self, head)
            if found is not None and self._sendable(len(found[0].body)):
                opened_here(conn, stream_id)
                hsts = self.https.hsts(head) if self.https is not None else None
                prepared = found[0]
                body = prepared.body
                hits = self.hits
                block = hits.answer_block(found, hsts)
                size = conn.max_outbound_frame_size
                if body:
                    # both windows moved as sending DATA moves them (RFC 9113
                    # 6.9.1); the stream's own is gone with it
                    conn.outbound_flow_control_window -= len(body)
                    self._emit(
                        headers_frame(stream_id, block, size, end_stream=False),
                        *data_frames(stream_id, body, size),
                    )
                    self._out_bytes += len(body)
                    if self._out_bytes > HIGH_WATER:
                        self._send_now()
                else:
                    self._emit(headers_frame(stream_id, block, size, end_stream=True))
                hits.account(self, head, found, started)
                hits.lane_answers += 1
                return
        self._events(open_stream(conn, stream_id, fields), found)

    def _lane_head(self, fields: list[tuple[bytes, bytes]]) -> RequestHead:
        return request_head(fields, self._peer, self.scheme)

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self._streams and not self._closed:
            self._idle = self._loop.call_later(
                self.settings.idle_timeout, self.goaway, h2.errors.ErrorCodes.NO_ERROR
            )

    # -- requests ----------------------------------------------------------------
    def _request(self, event: h2.events.RequestReceived, found: FoundHit | None = None) -> None:
        stream_id = event.stream_id
        stream = H2Stream(stream_id)
        self._streams[stream_id] = stream
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        ended = event.stream_ended is not None
        stream.body_ended = ended
        head = request_head(event.headers or (), self._peer, self.scheme)
        length_text = head.headers.get("content-length")
        length = int(length_text) if length_text is not None and length_text.isdigit() else None
        exists = not ended or bool(length)
        if self.https is not None:
            stream.hsts = self.https.hsts(head)
        if (
            ended
            and head.method == "GET"
            # traffic rules are the engine's to carry out, hits included: only a
            # request no rule acts on is answered here
            and (not self.engine.traffic.active or self.engine.traffic.passes(head))
            and self.hits.answer(self, stream, head, found)
        ):
            self._forget_if_done(stream)
            return
        body = H2Body(self, stream, exists, length)
        stream.task = self._loop.create_task(serve_stream(self, stream, head, body))

    def finished(self, stream: H2Stream) -> None:
        """The engine is done with a stream: give back the window of what it left
        unread; forget the stream once its answer is all sent."""
        if stream.body_unread:
            self.acknowledge(stream, stream.body_unread)
            stream.body_unread = 0
            stream.body.clear()
        stream.task = None
        self._forget_if_done(stream)

    def _forget_if_done(self, stream: H2Stream) -> None:
        if stream.task is None and (stream.reset or (stream.ending and not stream.pending)):
            self._streams.pop(stream.id, None)
            self._arm_idle()

    def _data(self, event: h2.events.DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        flow = event.flow_controlled_length or 0
        if stream is None or stream.task is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.acknowledge_received_data(flow, event.stream_id)
            return
        stream.body.append((event.data or b"", flow))
        stream.body_unread += flow
        stream.wake()

    def _body_end(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.body_ended = True
            stream.wake()

    def _reset_by_peer(self, stream_id: int) -> None:
        now = self._loop.time()
        resets = self._resets
        resets.append(now)
        while resets and resets[0] < now - self.settings.reset_window:
            resets.popleft()
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            stream.reset = True
            stream.wake()
            if stream.task is not None:
                stream.task.cancel()
        if len(resets) > self.settings.reset_limit:
            log.warning("h2 client %s reset streams too fast: GOAWAY", self._peer)
            self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return
        self._arm_idle()


def h2_factory(
    engine: Engine,
    metrics: NodeMetrics,
    access_log: AccessLog | None = None,
    limits: ConnectionLimits | None = None,
    h2_limits: H2Limits = DEFAULT_LIMITS,
    https: HttpsPolicy | None = None,
) -> Callable[[], H2Protocol]:
    """A protocol factory for HTTP/2 connections (what the ALPN dispatch calls)."""
    hits = H2Hits()

    def make() -> H2Protocol:
        return H2Protocol(
            engine,
            metrics=metrics,
            access_log=access_log,
            limits=limits,
            h2_limits=h2_limits,
            https=https,
            hits=hits,
        )

    return make
