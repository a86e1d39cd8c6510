"""Responding: the answers a node sends, from the store, from a fill, relayed, or its own.

Each answer's `Outcome` is decided by the engine and carried on the response (see
`outcome_of`); the Cache-Status field is written from it here. Once the head of an
answer has left, a failure cuts the connection: a client sees a truncated body,
never a short one that looks whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from aiohttp import web
from multidict import CIMultiDict

from edge.cache import policy
from edge.cache.conditional import evaluate_preconditions, if_range_allows
from edge.cache.encoding import choose_encoding
from edge.cache.model import ObjectMeta
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
from edge.filling import drop_undecodable, log
from edge.metrics import NodeMetrics
from edge.options import STALE_MARK, EngineOptions
from edge.outcome import ErrorSource, Outcome, refused
from edge.store import (
    BodyCorrupt,
    BodyGone,
    BodyRef,
    ObjectStore,
    StoredEntry,
    open_body,
    read_body,
)
from edge.upstream import GENERATED_ERROR_HEADER, UNREACHABLE, UpstreamError, UpstreamResponse

_R = TypeVar("_R", bound=web.StreamResponse)

#: Chunk size when a body is read from disk: few executor trips per object. (uvloop's
#: event loop has no sendfile, so bodies not in the memory tier are copied.)
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

    async def from_store(
        self,
        request: web.BaseRequest,
        entry: StoredEntry,
        meta: ObjectMeta,
        decision: Decision,
        outcome: Outcome,
        *,
        stale: bool = False,
    ) -> web.StreamResponse:
        """Answer from a stored object: conditionals, Range, encoding, then the body."""
        headers = self.response_headers(meta, decision.age, outcome, stale)
        if meta.status == 200 and _has_preconditions(request):
            precondition = evaluate_preconditions(
                request.method, request.headers, meta.etag, meta.last_modified
            )
            if precondition is not None:
                self.metrics.hits.inc()
                return tagged(web.Response(status=precondition, headers=headers), outcome)
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
                502, "stored object has no body", refused("no-body"), self.options.node_name
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
                return tagged(web.Response(status=416, headers=headers), outcome)
            status = 206
            start, end = byte_range.start, byte_range.end + 1
            headers["Content-Range"] = content_range(byte_range, body.size)
        if meta.status == 200:
            headers["Accept-Ranges"] = "bytes"
        self.metrics.bytes_sent.inc(end - start)
        if decoder is None:
            headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            response = tagged(web.StreamResponse(status=status, headers=headers), outcome)
            await response.prepare(request)
            return response
        if body.data is not None and decoder is None:
            data = body.data if (start, end) == (0, body.size) else body.data[start:end]
            return tagged(web.Response(status=status, headers=headers, body=data), outcome)
        try:
            return await self._stream_body(
                request,
                entry.key,
                tagged(web.StreamResponse(status=status, headers=headers), outcome),
                body,
                start,
                end,
                decoder,
            )
        except BodyGone:
            # gone before any header left (replaced or evicted by another worker)
            raise EntryGone(entry.key) from None

    async def _stream_body(
        self,
        request: web.BaseRequest,
        key: str,
        response: web.StreamResponse,
        body: BodyRef,
        start: int,
        end: int,
        decoder: StreamDecoder | None,
    ) -> web.StreamResponse:
        """Send a stored body: opened before the headers go, so a body replaced or
        evicted meanwhile is still read whole, and one already gone raises BodyGone
        while the request can still be answered another way.

        A body read whole from disk is checked against its checksum as it goes, its
        last chunk held back until the check passes: a mismatch cuts the connection
        (the client sees a truncated body, never a complete-looking corrupt one) and
        drops the object. Decoded output goes out one bounded piece at a time."""
        opened = await open_body(body) if body.data is None else None
        try:
            await response.prepare(request)
            chunks = (
                opened.chunks(start, end, COPY_CHUNK)
                if opened is not None
                else read_body(body, start, end, chunk_size=COPY_CHUNK)
            )
            try:
                async for chunk in chunks:
                    await _write_decoded(response, decoder, chunk)
                if decoder is not None:
                    await response.write(decoder.flush())
            except (BodyGone, DecodeError) as exc:
                # cut, never a short body that looks whole
                if isinstance(exc, BodyCorrupt):
                    await self._drop_corrupt(key, body)
                elif isinstance(exc, DecodeLimit):
                    await drop_undecodable(self.store, self.metrics, key, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        finally:
            if opened is not None:
                await opened.close()

    async def stream_fill(
        self, request: web.BaseRequest, fill: Fill, head: FillHead, outcome: Outcome
    ) -> web.StreamResponse:
        """Answer from a fill while it is still arriving (every waiter reads the file)."""
        assert head.meta is not None
        meta = head.meta
        headers = self.response_headers(meta, meta.age(self.clock()), outcome, False)
        if meta.status == 200 and _has_preconditions(request):
            precondition = evaluate_preconditions(
                request.method, request.headers, meta.etag, meta.last_modified
            )
            if precondition is not None:
                return tagged(web.Response(status=precondition, headers=headers), outcome)
        decoder: StreamDecoder | None = None
        if head.encoding != "identity":
            if choose_encoding(request.headers.get("accept-encoding"), (head.encoding,)) is None:
                decoder = self._decoder_for(head.encoding, meta)
            if decoder is None:
                headers["Content-Encoding"] = head.encoding
        status, start, end = meta.status, 0, head.length
        if meta.status == 200 and head.length is not None:
            headers["Accept-Ranges"] = "bytes"
            byte_range = _requested_range(request, meta, head.length, decoder, head.encoding)
            if isinstance(byte_range, Unsatisfiable):
                headers["Content-Range"] = unsatisfied_range(head.length)
                return tagged(web.Response(status=416, headers=headers), outcome)
            if byte_range is not None:
                # the fill stores the whole object; this client gets its range of it
                status, start, end = 206, byte_range.start, byte_range.end + 1
                headers["Content-Range"] = content_range(byte_range, head.length)
        if end is not None and decoder is None:
            headers["Content-Length"] = str(end - start)
        response = tagged(web.StreamResponse(status=status, headers=headers), outcome)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        try:
            async for chunk in fill.read(start, end if status == 206 else None):
                self.metrics.bytes_sent.inc(len(chunk))
                await _write_decoded(response, decoder, chunk)
            if decoder is not None:
                await response.write(decoder.flush())
        except (FillFailed, BodyGone, DecodeError) as exc:
            if isinstance(exc, DecodeLimit):
                self.metrics.decode_refused.inc()
            # the headers are gone already: cut the connection so the client sees a
            # truncated body, never a short one that looks complete
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _decoder_for(self, encoding: str, meta: ObjectMeta) -> StreamDecoder | None:
        """The decoder of a stored coding for a client that does not accept it, bounded
        by the object size limit; None when the client is one of our edges.

        An edge stores a coding as sent and decodes it itself, bounded, once (in
        make_variants) and per client that needs it. A shield that decoded for its
        edges would spend its CPU on every edge's copy, and a decoding stopped at the
        size limit would reach the edge as a cut, which it takes for a dead shield.
        """
        if self.options.downstream_is_cdn:
            return None
        return StreamDecoder(encoding, self._limits.get(meta.service))

    async def _drop_corrupt(self, key: str, body: BodyRef) -> None:
        """A body streamed from disk failed its checksum: drop its object."""
        await self.store.drop_corrupt(key, body)

    def response_headers(
        self, meta: ObjectMeta, age: float, outcome: Outcome, stale: bool
    ) -> CIMultiDict[str]:
        """The fields of an answer from a stored object (Age, Via, Cache-Status, Vary)."""
        headers: CIMultiDict[str] = CIMultiDict(meta.client_headers)
        headers["Age"] = str(int(age))
        headers["Via"] = f"{meta.upstream_via}, {self._via}" if meta.upstream_via else self._via
        headers["Cache-Status"] = outcome.cache_status(
            self.options.node_name, meta.upstream_cache_status
        )
        if meta.compressible:
            vary = headers.get("Vary")
            if not vary:
                headers["Vary"] = "Accept-Encoding"
            elif "accept-encoding" not in vary.lower():
                headers["Vary"] = f"{vary}, Accept-Encoding"
        if stale and self.options.mark_stale:
            headers[STALE_MARK] = "1"
        return headers

    def error_answer(self, head: FillHead, outcome: Outcome) -> web.StreamResponse:
        """A fill's upstream failure, relayed (an error answer) or our own (no answer)."""
        if head.error_status:
            relayed = replace(outcome, fwd_status=head.error_status, error=ErrorSource.UPSTREAM)
            headers: CIMultiDict[str] = CIMultiDict(policy.client_header_pairs(head.error_pairs))
            headers["Cache-Status"] = relayed.cache_status(self.options.node_name)
            response = web.Response(status=head.error_status, headers=headers, body=head.error_body)
            return tagged(response, relayed)
        error = head.error or UpstreamError(502, "upstream failed")
        self.metrics.upstream_errors.inc()
        # the upstream's state-change log has the details: a line per request would
        # bury them during an outage
        log.debug("upstream error: %s", error)
        response = error_response(
            error.status,
            error.reason,
            replace(outcome, detail=detail_token(error.reason), error=ErrorSource.UPSTREAM),
            self.options.node_name,
        )
        if error.unreachable:
            # the origin could not be reached at all: a tier below that holds a stale
            # copy may serve it (RFC 9111 4.2.4), as for its own connect failure
            response.headers[GENERATED_ERROR_HEADER] = UNREACHABLE
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    async def relay(
        self, request: web.BaseRequest, upstream: UpstreamResponse, outcome: Outcome
    ) -> web.StreamResponse:
        """Pass an upstream answer on as it arrives, with our hygiene and trail."""
        pairs = policy.upstream_header_pairs(upstream.header_pairs)
        headers: CIMultiDict[str] = CIMultiDict(
            policy.client_header_pairs(pairs, for_cdn=self.options.downstream_is_cdn)
        )
        # relayed as received, so its coding, age and date stay the upstream's
        for name in ("Content-Encoding", "Age", "Date"):
            value = upstream.headers.get(name)
            if value is not None:
                headers[name] = value
        upstream_status = ", ".join(upstream.headers.getall("cache-status", []))
        outcome = replace(outcome, fwd_status=upstream.status)
        headers["Cache-Status"] = outcome.cache_status(self.options.node_name, upstream_status)
        upstream_via = ", ".join(upstream.headers.getall("via", []))
        headers["Via"] = f"{upstream_via}, {self._via}" if upstream_via else self._via
        length = upstream.headers.get("content-length")
        if length is not None:
            headers["Content-Length"] = length
        response = tagged(web.StreamResponse(status=upstream.status, headers=headers), outcome)
        try:
            await response.prepare(request)
            if request.method != "HEAD" and upstream.status not in (204, 304):
                async for chunk in upstream.iter_chunks():
                    await response.write(chunk)
            await response.write_eof()
        except UpstreamError:
            upstream.close()
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            upstream.release()
        return response


async def _write_decoded(
    response: web.StreamResponse, decoder: StreamDecoder | None, chunk: bytes
) -> None:
    """Write `chunk`, decoded one bounded piece at a time when `decoder` is set (each
    piece is written, and the transport drained, before the next is made)."""
    if decoder is None:
        await response.write(chunk)
        return
    for piece in decoder.iter_decode(chunk):
        await response.write(piece)


_PRECONDITIONS = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since")


def _has_preconditions(request: web.BaseRequest) -> bool:
    headers = request.headers
    return any(name in headers for name in _PRECONDITIONS)


def _requested_range(
    request: web.BaseRequest,
    meta: ObjectMeta,
    size: int,
    decoder: StreamDecoder | None,
    encoding: str,
) -> ByteRange | Unsatisfiable | None:
    """The single range a client asked for, as `_from_store` would grant it: on the
    identity body only, not when If-Range fails (RFC 9110 13.1.5), multiple ranges
    answered whole (None)."""
    range_header = request.headers.get("range")
    if not range_header or decoder is not None or encoding != "identity":
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and not if_range_allows(if_range, meta.etag, meta.last_modified):
        return None
    return parse_range(range_header, size)


def error_response(status: int, reason: str, outcome: Outcome, node: str) -> web.Response:
    """An error this node answers: a short reason, never an internal address (those
    go to the log)."""
    response = web.Response(status=status, text=f"{status} {reason}\n")
    if outcome.error is ErrorSource.UPSTREAM:
        # this node answered for a failure beyond it (origin down, origin connection
        # cap); the tier below passes such errors on instead of failing over
        response.headers[GENERATED_ERROR_HEADER] = "upstream"
    response.headers["Cache-Status"] = outcome.cache_status(node)
    return tagged(response, outcome)


def refuse(status: int, reason: str, detail: str) -> web.Response:
    """A 4xx for a request we will not handle; the connection is closed after it, since
    the rest of what the client sent (an unread body) cannot be trusted as framing."""
    response = web.Response(status=status, text=f"{status} {reason}\n")
    response.force_close()
    return tagged(response, refused(detail))


#: Where a response carries its request's Outcome (see `outcome_of`).
OUTCOME = "edgeshield.outcome"


def tagged(response: _R, outcome: Outcome) -> _R:
    """`response`, carrying `outcome` for the node's metrics and access log."""
    response[OUTCOME] = outcome
    return response


def outcome_of(response: web.StreamResponse) -> Outcome:
    """The Outcome the engine decided for `response` (one it made itself, if untagged)."""
    outcome = response.get(OUTCOME)
    return outcome if isinstance(outcome, Outcome) else refused("internal-error")


def detail_token(reason: str) -> str:
    """A short reason as a Cache-Status detail token ("origin unreachable" →
    "origin-unreachable")."""
    return "-".join(reason.split()) or "error"
