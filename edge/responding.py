"""Responding: the answers a node sends, from the store, from a fill, relayed, or its own.

Answers are written to the front's `ResponseSink` (edge.front.types); each returns the
request's `Outcome`, from which the Cache-Status field is written here. Once the head of an
answer has left, a failure cuts the connection: a client sees a truncated body,
never a short one that looks whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from edge.cache.conditional import evaluate_preconditions, if_range_allows
from edge.cache.encoding import choose_encoding, is_decodable, varies_on_coding
from edge.cache.fields import client_header_pairs, stored_date
from edge.cache.headers import Headers
from edge.cache.hints import early_hints
from edge.cache.model import HeaderPairs, ObjectMeta
from edge.cache.policy import Decision
from edge.cache.ranges import (
    ByteRange,
    Unsatisfiable,
    content_range,
    parse_range,
    unsatisfied_range,
)
from edge.compress import DecodeError, DecodeLimit, StreamDecoder
from edge.fill import Fill, FillFailed, FillHead
from edge.filling import drop_undecodable
from edge.front.types import FileSink, RequestHead, ResponseSink
from edge.metrics import NodeMetrics
from edge.options import STALE_MARK, EngineOptions
from edge.outcome import Outcome, refused
from edge.own_answers import detail_token, error_response, refuse
from edge.relaying import fill_error_answer, relay_answer
from edge.store import (
    BodyCorrupt,
    BodyGone,
    BodyRef,
    ObjectStore,
    StoredEntry,
    open_body,
    read_body,
)
from edge.store.bodies import OpenBody, VerifiedBodies
from edge.upstream import UpstreamResponse

# the node's own answers live in edge.own_answers; their names stay importable here
__all__ = ["COPY_CHUNK", "EntryGone", "Responder", "detail_token", "error_response", "refuse"]

#: Chunk size when a body is read from disk: few executor trips per object. (Bodies a
#: front can send with `os.sendfile` are read this way only the first time, to check
#: them; see `Responder._stream_body`.)
COPY_CHUNK = 1024 * 1024


class EntryGone(Exception):
    """A stored entry's body vanished before its response started."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class Responder:
    """Writes a node's answers (Cache-Status, Via, codings, ranges, bodies)."""

    def __init__(
        self,
        options: EngineOptions,
        store: ObjectStore,
        metrics: NodeMetrics,
        clock: Callable[[], float],
        limits: dict[str, int],
    ) -> None:
        self.options = options
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._limits = limits
        self._via = f"1.1 {options.node_name} (edgeshield)"
        #: keys whose compressed variants are being made (the Filler's set)
        self.compressing: set[str] = set()
        #: told the key of a body refused for decoding past its limit (the engine's)
        self.on_refused: Callable[[str], None] | None = None
        #: body files this process has read whole and checked (then sent by sendfile)
        self.verified = VerifiedBodies()
        #: EDGESHIELD_FILE_BODIES=chunks: copy every body through Python as before
        #: (to measure against, or to work around a kernel's sendfile)
        self._sendfile = os.environ.get("EDGESHIELD_FILE_BODIES", "sendfile") != "chunks"

    async def from_store(
        self,
        request: RequestHead,
        sink: ResponseSink,
        entry: StoredEntry,
        meta: ObjectMeta,
        decision: Decision,
        outcome: Outcome,
        *,
        stale: bool = False,
        validated: bool = False,
    ) -> Outcome:
        """Answer from a stored object: conditionals, Range, encoding, then the body.

        `validated`: the object was just validated (a 304), so the fields its
        qualified no-cache lists may be sent (RFC 9111 5.2.2.4)."""
        headers = self.response_headers(
            meta,
            decision.age,
            outcome,
            stale,
            codings=None if entry.key in self.compressing else entry.bodies.keys(),
            validated=validated,
        )
        if meta.status == 200 and _has_preconditions(request.headers):
            precondition = evaluate_preconditions(
                request.method, request.headers, meta.etag, meta.last_modified
            )
            if precondition is not None:
                self.metrics.hits.inc()
                sink.send(precondition, headers)
                return outcome
        range_header = request.headers.get("range")
        encoding = choose_encoding(
            None if range_header else request.headers.get("accept-encoding"), entry.bodies.keys()
        )
        decoder: StreamDecoder | None = None
        if encoding is None:
            # the client takes none of the stored codings: decode the origin's on the way,
            # no further than the object size limit (a decompression bomb stops there);
            # an edge below gets the coding as stored (see _decoder_for)
            encoding = meta.upstream_encoding
            decoder = self._decoder_for(encoding, meta)
        body = entry.bodies.get(encoding)
        if body is None:
            return error_response(
                sink, 502, "stored object has no body", refused("no-body"), self.options.node_name
            )
        if encoding != "identity" and decoder is None:
            headers["Content-Encoding"] = encoding
        self.metrics.hits.inc()
        status = meta.status
        start, end = 0, body.size
        if_range = request.headers.get("if-range")
        byte_range = (
            parse_range(range_header, body.size)
            if range_header and status == 200 and decoder is None
            else None
        )
        # RFC 9110 13.1.5: a failed If-Range means the whole representation
        if byte_range is not None and (
            if_range is None or if_range_allows(if_range, meta.etag, meta.last_modified)
        ):
            if isinstance(byte_range, Unsatisfiable):
                headers["Content-Range"] = unsatisfied_range(body.size)
                sink.send(416, headers)
                return outcome
            status = 206
            start, end = byte_range.start, byte_range.end + 1
            headers["Content-Range"] = content_range(byte_range, body.size)
        if meta.status == 200:
            headers["Accept-Ranges"] = "bytes"
        self.metrics.bytes_sent.inc(end - start)
        if decoder is None:
            headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            await sink.start(status, headers)
            await sink.end()
            return outcome
        if body.data is not None and decoder is None:
            data = body.data if (start, end) == (0, body.size) else body.data[start:end]
            sink.send(status, headers, data)
            return outcome
        try:
            await self._stream_body(sink, entry.key, status, headers, body, start, end, decoder)
            return outcome
        except BodyGone:
            # gone before any header left (replaced or evicted by another worker)
            raise EntryGone(entry.key) from None

    async def _stream_body(
        self,
        sink: ResponseSink,
        key: str,
        status: int,
        headers: CIMultiDict[str],
        body: BodyRef,
        start: int,
        end: int,
        decoder: StreamDecoder | None,
    ) -> None:
        """Send a stored body: opened before the headers go, so a body replaced or
        evicted meanwhile is still read whole, and one already gone raises BodyGone
        while the request can still be answered another way.

        A body read whole from disk is checked against its checksum as it goes, its
        last chunk held back until the check passes: a mismatch cuts the connection
        (the client sees a truncated body, never a complete-looking corrupt one) and
        drops the object. Decoded output goes out one bounded piece at a time."""
        opened = await open_body(body) if body.data is None else None
        try:
            await sink.start(status, headers)
            if (
                opened is not None
                and decoder is None
                and (
                    (start, end) != (0, body.size)
                    or body.checksum is None
                    or opened.identity in self.verified
                )
                and await self._send_file(sink, opened, start, end)
            ):
                return
            chunks = (
                opened.chunks(start, end, COPY_CHUNK)
                if opened is not None
                else read_body(body, start, end, chunk_size=COPY_CHUNK)
            )
            try:
                async for chunk in chunks:
                    await _write_decoded(sink, decoder, chunk)
                if decoder is not None:
                    await sink.write(decoder.flush())
            except (BodyGone, DecodeError) as exc:
                # cut, never a short body that looks whole
                if isinstance(exc, BodyCorrupt):
                    if opened is not None:
                        self.verified.discard(opened.identity)
                    await self._drop_corrupt(key, body)
                elif isinstance(exc, DecodeLimit):
                    await drop_undecodable(self.store, self.metrics, key, exc, self.on_refused)
                sink.abort()
                return
            if opened is not None and (start, end) == (0, body.size):
                # read whole and checked: from now on this file may go by sendfile
                self.verified.add(opened.identity)
            await sink.end()
        finally:
            if opened is not None:
                await opened.close()

    async def _send_file(self, sink: ResponseSink, opened: OpenBody, start: int, end: int) -> bool:
        """Send [start, end) of an open body file without reading it into Python, when
        the front can (`FileSink`: plain TCP); False when it cannot (the caller copies).
        A file that ends early cuts the answer, as a short read does."""
        if not self._sendfile or not isinstance(sink, FileSink) or not sink.sends_files():
            return False
        self.metrics.sendfile_answers.inc()
        sent = await sink.send_file(opened.fd, start, end - start)
        if sent < end - start:
            sink.abort()
            return True
        await sink.end()
        return True

    async def stream_fill(
        self,
        request: RequestHead,
        sink: ResponseSink,
        fill: Fill,
        head: FillHead,
        outcome: Outcome,
    ) -> Outcome:
        """Answer from a fill while it is still arriving (every waiter reads the file)."""
        assert head.meta is not None
        meta = head.meta
        headers = self.response_headers(
            meta, meta.age(self.clock()), outcome, False, validated=True
        )
        if meta.status == 200 and _has_preconditions(request.headers):
            precondition = evaluate_preconditions(
                request.method, request.headers, meta.etag, meta.last_modified
            )
            if precondition is not None:
                sink.send(precondition, headers)
                return outcome
        decoder: StreamDecoder | None = None
        if head.encoding != "identity":
            if choose_encoding(request.headers.get("accept-encoding"), (head.encoding,)) is None:
                decoder = self._decoder_for(head.encoding, meta)
            if decoder is None:
                headers["Content-Encoding"] = head.encoding
        status, start, end = meta.status, 0, head.length
        if meta.status == 200 and head.length is not None:
            headers["Accept-Ranges"] = "bytes"
            byte_range = _requested_range(
                request.headers, meta, head.length, decoder, head.encoding
            )
            if isinstance(byte_range, Unsatisfiable):
                headers["Content-Range"] = unsatisfied_range(head.length)
                sink.send(416, headers)
                return outcome
            if byte_range is not None:
                # the fill stores the whole object; this client gets its range of it
                status, start, end = 206, byte_range.start, byte_range.end + 1
                headers["Content-Range"] = content_range(byte_range, head.length)
        if fill.whole_at_commit and decoder is None and request.method != "HEAD":
            # no Content-Length here: the sink frames a whole answer itself
            return await self._whole_fill(sink, fill, status, headers, start, end, outcome)
        if end is not None and decoder is None:
            headers.add("Content-Length", str(end - start))
        await sink.start(status, headers)
        if request.method == "HEAD":
            await sink.end()
            return outcome
        try:
            async for chunk in fill.read(start, end if status == 206 else None):
                self.metrics.bytes_sent.inc(len(chunk))
                await _write_decoded(sink, decoder, chunk)
            if decoder is not None:
                await sink.write(decoder.flush())
        except (FillFailed, BodyGone, DecodeError) as exc:
            if isinstance(exc, DecodeLimit):
                self.metrics.decode_refused.inc()
            # the headers are gone already: cut the connection so the client sees a
            # truncated body, never a short one that looks complete
            sink.abort()
            return outcome
        await sink.end()
        return outcome

    async def _whole_fill(
        self,
        sink: ResponseSink,
        fill: Fill,
        status: int,
        headers: CIMultiDict[str],
        start: int,
        end: int | None,
        outcome: Outcome,
    ) -> Outcome:
        """A small fill's answer (`WHOLE_AT_COMMIT`: its readers wait for the commit
        anyway) written whole, head and body in one write, not a head and then a body.
        A fill that breaks off gets the head and a cut, as a streamed one does."""
        try:
            body = await fill.whole(start, end if status == 206 else None)
        except FillFailed:
            if end is not None:
                headers.add("Content-Length", str(end - start))
            await sink.start(status, headers)
            sink.abort()
            return outcome
        self.metrics.bytes_sent.inc(len(body))
        sink.send(status, headers, body)
        return outcome

    def _decoder_for(self, encoding: str, meta: ObjectMeta) -> StreamDecoder | None:
        """The decoder of a stored coding for a client that does not accept it, bounded
        by the object size limit; None when the client is one of our edges.

        An edge stores a coding as sent and decodes it itself, bounded, once (in
        make_variants) and per client that needs it. A shield that decoded for its
        edges would spend its CPU on every edge's copy, and a decoding stopped at the
        size limit would reach the edge as a cut, which it takes for a dead shield.
        """
        if self.options.downstream_is_cdn or not is_decodable(encoding):
            # a coding we do not know is passed as stored, never decoded (or coded again)
            return None
        return StreamDecoder(encoding, self._limits.get(meta.service))

    async def _drop_corrupt(self, key: str, body: BodyRef) -> None:
        """A body streamed from disk failed its checksum: drop its object."""
        await self.store.drop_corrupt(key, body)

    def response_headers(
        self,
        meta: ObjectMeta,
        age: float,
        outcome: Outcome,
        stale: bool,
        *,
        codings: Iterable[str] | None = None,
        validated: bool = False,
    ) -> CIMultiDict[str]:
        """The fields of an answer from a stored object (Date, Age, Via, Cache-Status,
        Vary).

        `codings`: the stored bodies' codings, which say whether the answer depends
        on Accept-Encoding; None while the object is being filled or compressed (it
        will get the variants it is eligible for, `meta.compressible`). `validated`:
        see `from_store`.
        """
        headers: CIMultiDict[str] = CIMultiDict(meta.client_headers)
        if validated and meta.no_cache_fields:
            listed = frozenset(meta.no_cache_fields)
            headers.extend(
                (name, value)
                for name, value in client_header_pairs(
                    meta.upstream_headers, for_cdn=self.options.downstream_is_cdn
                )
                if name.lower() in listed
            )
        # RFC 9110 6.6.1 / RFC 9111 4: the stored Date, never the time of this hit
        headers["Date"] = stored_date(meta.upstream_headers, meta.response_time)
        headers["Age"] = str(int(age))
        headers["Via"] = f"{meta.upstream_via}, {self._via}" if meta.upstream_via else self._via
        headers["Cache-Status"] = outcome.cache_status(
            self.options.node_name, meta.upstream_cache_status
        )
        varies = (
            meta.compressible
            if codings is None
            else varies_on_coding(codings, meta.upstream_encoding)
        )
        if varies:
            # RFC 9110 12.5.5: only when the answer really depends on Accept-Encoding
            vary = headers.get("Vary")
            if not vary:
                headers["Vary"] = "Accept-Encoding"
            elif "accept-encoding" not in vary.lower():
                headers["Vary"] = f"{vary}, Accept-Encoding"
        if stale and self.options.mark_stale:
            headers[STALE_MARK] = "1"
        return headers

    def early_hints(self, sink: ResponseSink, meta: ObjectMeta) -> None:
        """RFC 8297: a 103 with the stored response's preload Links, sent before going
        upstream for it (the client may fetch them while it waits)."""
        links = early_hints(meta.upstream_headers)
        if links:
            sink.informational(103, CIMultiDict(("Link", link) for link in links))

    def error_answer(self, sink: ResponseSink, head: FillHead, outcome: Outcome) -> Outcome:
        """A fill's upstream failure, relayed (an error answer) or our own (no answer);
        see edge.relaying."""
        return fill_error_answer(sink, head, outcome, self.options, self.metrics)

    async def relay(
        self,
        request: RequestHead,
        sink: ResponseSink,
        upstream: UpstreamResponse,
        outcome: Outcome,
        fields: Callable[[HeaderPairs], HeaderPairs] | None = None,
    ) -> Outcome:
        """Pass an upstream answer on as it arrives (edge.relaying); `fields`: what
        the traffic rules make of its fields (edge.traffic)."""
        return await relay_answer(request, sink, upstream, outcome, self.options, self._via, fields)


async def _write_decoded(sink: ResponseSink, decoder: StreamDecoder | None, chunk: bytes) -> None:
    """Write `chunk`, decoded one bounded piece at a time when `decoder` is set (each
    piece is written, and the transport drained, before the next is made)."""
    if decoder is None:
        await sink.write(chunk)
        return
    for piece in decoder.iter_decode(chunk):
        await sink.write(piece)


def _has_preconditions(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    # RFC 9110 13.1's four preconditions, each a lookup (no generator per answer)
    return (
        "if-none-match" in headers
        or "if-modified-since" in headers
        or "if-match" in headers
        or "if-unmodified-since" in headers
    )


def _requested_range(
    request_headers: Headers,
    meta: ObjectMeta,
    size: int,
    decoder: StreamDecoder | None,
    encoding: str,
) -> ByteRange | Unsatisfiable | None:
    """The single range a client asked for, as `_from_store` would grant it: on the
    identity body only, not when If-Range fails (RFC 9110 13.1.5), multiple ranges
    answered whole (None)."""
    range_header = request_headers.get("range")
    if not range_header or decoder is not None or encoding != "identity":
        return None
    if_range = request_headers.get("if-range")
    if if_range is not None and not if_range_allows(if_range, meta.etag, meta.last_modified):
        return None
    return parse_range(range_header, size)
