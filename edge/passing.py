"""Requests the cache does not answer from a fill: sent on unchanged (but for hygiene)
and the answer relayed, and the invalidation an unsafe method's success makes
(RFC 9111 4.4); also what a fill of a request sends upstream (`fill_job`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from multidict import CIMultiDictProxy

from edge.cache import transitions
from edge.cache.keys import normalize_target, origin_form, primary_key
from edge.cache.model import ObjectMeta
from edge.cache.purge import PurgeRules
from edge.filling import FillJob, header_value
from edge.forwarding import end_to_end_fields, is_trusted_peer, upstream_request_headers
from edge.front.types import BodyStream, RequestHead, ResponseSink
from edge.metrics import NodeMetrics
from edge.options import EngineOptions, Upstream
from edge.outcome import ErrorSource, Outcome
from edge.responding import Responder, detail_token, error_response
from edge.store import ObjectStore, StoredEntry
from edge.traffic import relayed_fields
from edge.upstream import UpstreamError
from fleet.config import Service

log = logging.getLogger("edgeshield.engine")


@dataclass
class UpstreamRequests:
    """How a node's requests go to the next tier: a fill's request (`fill_job`) and a
    pass-through (`pass_through`), with the Via and CDN-Loop this node adds."""

    options: EngineOptions
    store: ObjectStore
    upstream: Upstream
    rules: PurgeRules
    metrics: NodeMetrics
    clock: Callable[[], float]
    respond: Responder
    #: this node's CDN-Loop member (RFC 8586), which also detects a loop
    loop_token: str = field(init=False)
    _via: str = field(init=False)

    def __post_init__(self) -> None:
        options = self.options
        self.loop_token = options.cdn_loop_token or f"edgeshield-{options.node_name}"
        self._via = f"1.1 {options.node_name} (edgeshield)"

    def trusted(self, request: RequestHead) -> bool:
        """Whether the peer's forwarding fields are kept (see edge.forwarding)."""
        return is_trusted_peer(request, self.options.trusted_proxies, self.options.node_token)

    def fill_job(
        self,
        request: RequestHead,
        service: Service,
        host: str,
        target: str,
        key: str,
        stale: StoredEntry | None,
    ) -> FillJob:
        """What a fill for this request fetches: validators added when revalidating."""
        # the fields that went upstream, not the raw request: see end_to_end_fields
        fields = end_to_end_fields(request.headers)
        headers = upstream_request_headers(
            request,
            host,
            cacheable=True,
            via=self._via,
            loop_token=self.loop_token,
            trusted=self.trusted(request),
            end_to_end=fields,
        )
        if stale is not None and isinstance(stale.meta, ObjectMeta) and stale.bodies:
            # RFC 9111 4.3.1: validate with the stored validators, and the client's
            # entity-tags merged in (4.3.2), so a 304 for its copy can flow through
            headers.update(
                transitions.validation_request_fields(
                    stale.meta.etag,
                    header_value(stale.meta.upstream_headers, "last-modified"),
                    request.headers,
                )
            )
        else:
            stale = None
        return FillJob(service, host, target, key, headers, stale, fields)

    async def pass_through(
        self,
        request: RequestHead,
        sink: ResponseSink,
        service: Service,
        host: str,
        detail: str = "",
        *,
        body: BodyStream | None = None,
        invalidate: bool = False,
    ) -> Outcome:
        """Send the request on unchanged (but for hygiene) and relay the answer.

        `invalidate`: an unsafe method (RFC 9111 4.4); once the upstream's status says
        it succeeded, and before any of the answer leaves, the target URI is invalidated.
        """
        self.metrics.passes.inc()
        # the body goes on with framing of our own: its length if the client gave one,
        # else (chunked) the client library sends it chunked; nothing announced that is
        # not sent
        sent = body if body is not None and body.exists else None
        headers = upstream_request_headers(
            request,
            host,
            cacheable=False,
            via=self._via,
            loop_token=self.loop_token,
            trusted=self.trusted(request),
            body_length=sent.length if sent is not None else None,
        )
        target = normalize_target(origin_form(request.target), False, service.cache_key.drop_params)
        key = primary_key(service.name, host, target)
        waited = time.perf_counter()
        try:
            upstream = await self.upstream.fetch(
                service,
                key,
                request.method,
                target,
                headers,
                sent.chunks() if sent is not None else None,
            )
        except UpstreamError as exc:
            self.metrics.upstream_errors.inc()
            log.debug("%s %s: upstream error: %s", request.method, target, exc)
            return error_response(
                sink,
                exc.status,
                exc.reason,
                Outcome(fwd="request", detail=detail_token(exc.reason), error=ErrorSource.UPSTREAM),
                self.options.node_name,
                retry_after=exc.retry_after,
            )
        upstream_seconds = time.perf_counter() - waited
        if invalidate and 200 <= upstream.status < 400:
            await self._invalidate(service, host, target, upstream.headers)
        outcome = Outcome(fwd="request", detail=detail, upstream_seconds=upstream_seconds)
        rule_fields = relayed_fields(service, request.method, host, target, request.headers)
        return await self.respond.relay(request, sink, upstream, outcome, rule_fields)

    async def _invalidate(
        self, service: Service, host: str, target: str, response_headers: CIMultiDictProxy[str]
    ) -> None:
        """RFC 9111 4.4: an unsafe request that succeeded invalidates the target URI,
        and the URIs in Location and Content-Location when their host is the same.

        Done as a rule at lookup (`PurgeRules.invalidate`), so it covers every variant,
        the memory tier, and fills in flight that started before it; the primary entry
        is deleted too, to give its space back. The rule is this process's own: other
        worker processes of the node see the deletion from the shared index, and drop
        their memory-tier copy when its memory lifetime ends.
        """
        now = self.clock()
        policy_ = service.cache_key
        for raw in transitions.invalidated_targets(host, target, response_headers):
            keyed = normalize_target(raw, policy_.sort_query, policy_.drop_params)
            await self.rules.invalidate_everywhere(service.name, host, keyed, now)
            await self.store.delete(primary_key(service.name, host, keyed))
            self.metrics.invalidations.inc()
