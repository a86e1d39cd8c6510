"""Answers not taken from the store: an upstream answer relayed as it arrives (with
our hygiene, the traffic rules' fields and our trail), and a fill's upstream failure
(the upstream's error answer relayed, or our own)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from multidict import CIMultiDict

from edge.cache import policy
from edge.cache.model import HeaderPairs
from edge.fill import FillHead
from edge.front.types import RequestHead, ResponseSink
from edge.metrics import NodeMetrics
from edge.options import EngineOptions
from edge.outcome import ErrorSource, Outcome
from edge.own_answers import detail_token, error_response
from edge.upstream import UpstreamError, UpstreamResponse

log = logging.getLogger("edgeshield.engine")


def fill_error_answer(
    sink: ResponseSink,
    head: FillHead,
    outcome: Outcome,
    options: EngineOptions,
    metrics: NodeMetrics,
) -> Outcome:
    """A fill's upstream failure, relayed (an error answer) or our own (no answer)."""
    if head.error_status:
        relayed = outcome._replace(fwd_status=head.error_status, error=ErrorSource.UPSTREAM)
        headers: CIMultiDict[str] = CIMultiDict(policy.client_header_pairs(head.error_pairs))
        headers["Cache-Status"] = relayed.cache_status(options.node_name)
        sink.send(head.error_status, headers, head.error_body)
        return relayed
    error = head.error or UpstreamError(502, "upstream failed")
    metrics.upstream_errors.inc()
    # the upstream's state-change log has the details: a line per request would
    # bury them during an outage
    log.debug("upstream error: %s", error)
    return error_response(
        sink,
        error.status,
        error.reason,
        outcome._replace(detail=detail_token(error.reason), error=ErrorSource.UPSTREAM),
        options.node_name,
        unreachable=error.unreachable,
        retry_after=error.retry_after,
    )


async def relay_answer(
    request: RequestHead,
    sink: ResponseSink,
    upstream: UpstreamResponse,
    outcome: Outcome,
    options: EngineOptions,
    via: str,
    fields: Callable[[HeaderPairs], HeaderPairs] | None = None,
) -> Outcome:
    """Pass an upstream answer on as it arrives, with our hygiene and trail;
    `fields`: what the traffic rules make of its fields (edge.traffic)."""
    pairs = policy.upstream_header_pairs(upstream.header_pairs)
    if fields is not None:
        pairs = fields(pairs)
    headers: CIMultiDict[str] = CIMultiDict(
        policy.client_header_pairs(pairs, for_cdn=options.downstream_is_cdn)
    )
    # relayed as received, so its coding, age and date stay the upstream's
    for name in ("Content-Encoding", "Age", "Date"):
        value = upstream.headers.get(name)
        if value is not None:
            headers[name] = value
    upstream_status = ", ".join(upstream.headers.getall("cache-status", []))
    outcome = outcome._replace(fwd_status=upstream.status)
    headers["Cache-Status"] = outcome.cache_status(options.node_name, upstream_status)
    upstream_via = ", ".join(upstream.headers.getall("via", []))
    headers["Via"] = f"{upstream_via}, {via}" if upstream_via else via
    length = upstream.headers.get("content-length")
    if length is not None:
        headers["Content-Length"] = length
    try:
        await sink.start(upstream.status, headers)
        if request.method != "HEAD" and upstream.status not in (204, 304):
            async for chunk in upstream.iter_chunks():
                await sink.write(chunk)
        await sink.end()
    except UpstreamError:
        upstream.close()
        sink.abort()
    finally:
        upstream.release()
    return outcome
