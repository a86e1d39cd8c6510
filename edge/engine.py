"""The one driver: carries out the cache policy's decisions against the store and upstream.

Edge and shield both run this engine; they differ by `EngineOptions` (the edge makes
compressed variants and hides CDN-only fields from clients; the shield stores what the
origin sent and passes those fields on to the edges) and by their `Upstream`.

The request path, top to bottom (`handle`; docs/architecture.md draws it):
  hot lane → a plain GET for a fresh in-memory object is answered at once (hotlane)
  route    → the service for the Host (421 for any other host), loop check (508)
  classify → pass / invalidate (unsafe methods) / cacheable
  lookup   → memory tier (no await) or disk index; Vary index → the variant
  decide   → policy.decide: serve, serve stale + revalidate, revalidate, fetch
  fill     → join or start the key's fill (filling); its head is what
             transitions.after_fetch / after_error decided: stream, pass, 304, error
  respond  → from the store, from the fill, relayed, or an error (responding)
  pass     → anything else goes upstream on its own and is relayed (passing)
A lookup that finds the store changed underneath starts over, at most MAX_RESTARTS
times. Each answer carries one `Outcome` (edge.outcome).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import assert_never

from edge.cache import policy, transitions
from edge.cache.directives import request_directives
from edge.cache.keys import normalize_target, origin_form, primary_key
from edge.cache.model import ObjectMeta, VaryIndex
from edge.cache.policy import Action, Decision, RequestKind
from edge.cache.purge import PurgeRules, PurgeVerdict
from edge.cache.rules import NO_REQUEST_PLAN, RequestPlan
from edge.cache.transitions import Error, ServeStale
from edge.fill import HeadKind
from edge.filling import Filler, variant_key
from edge.forwarding import (
    end_to_end_fields,
    loop_tokens,
    request_host,
)
from edge.front.types import BodyStream, RequestHead, ResponseSink
from edge.hotlane import HotLane, purge_verdict
from edge.informational import relay_informational_to
from edge.metrics import NodeMetrics
from edge.options import EngineOptions, Upstream
from edge.outcome import Outcome, refused
from edge.passing import UpstreamRequests
from edge.refusals import Refusals
from edge.responding import EntryGone, Responder, error_response, refuse
from edge.store import ObjectStore, StoredEntry
from edge.traffic import TrafficGate, cache_key_suffix, keyed_target, relayed_fields
from fleet.config import Service, object_limit

__all__ = ["Engine", "EngineOptions", "Upstream"]

log = logging.getLogger("edgeshield.engine")

#: How often one request looks the store up again after it changed underneath (a
#: body gone before its answer started, a fill that stored another variant).
MAX_RESTARTS = 3


class _Restart:
    """The answer of a lookup that must start over (see MAX_RESTARTS)."""


RESTART = _Restart()


class Engine:
    """Serves one node's traffic: the cache's request path as one readable driver."""

    def __init__(
        self,
        services: tuple[Service, ...],
        options: EngineOptions,
        store: ObjectStore,
        upstream: Upstream,
        rules: PurgeRules,
        metrics: NodeMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.store = store
        self.upstream = upstream
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self._hosts = {host: service for service in services for host in service.hosts}
        #: per service: the largest body stored, or decoded for a client
        limits = self._limits = {s.name: object_limit(s, store.max_bytes) for s in services}
        self.filler = Filler(options, store, upstream, rules, metrics, clock, limits)
        self.fills = self.filler.fills
        self.respond = Responder(options, store, metrics, clock, limits)
        self.respond.compressing = self.filler.compressing
        #: keys whose body decoded past the limit: answered without a fetch a while
        self.refusals = Refusals()
        self.filler.on_refused = self.respond.on_refused = self._refused
        self.hot = HotLane(store, rules, metrics, clock, self.respond)
        self.hot.hosts = self._hosts
        store.on_corrupt = self._corrupt_found
        self.onward = UpstreamRequests(
            options, store, upstream, rules, metrics, clock, self.respond
        )
        self.traffic = TrafficGate(services, options, store, rules, clock)

    def reconfigure(self, services: tuple[Service, ...]) -> None:
        """Serve `services` from now on (a reloaded fleet file): their hosts and object
        limits and traffic rules (the rate limits keep their buckets); the fast lane
        forgets its routes, so a host no longer served is refused."""
        self._hosts = {host: service for service in services for host in service.hosts}
        limiter = self.traffic.limiter
        self.traffic = TrafficGate(services, self.options, self.store, self.rules, self.clock)
        self.traffic.limiter = limiter
        self._limits.clear()
        self._limits.update({s.name: object_limit(s, self.store.max_bytes) for s in services})
        self.hot.forget_routes()
        self.hot.hosts = self._hosts
        self.rules.serve(services)

    # -- the request path ---------------------------------------------------------------
    async def handle(self, request: RequestHead, body: BodyStream, sink: ResponseSink) -> Outcome:
        """Answer one client request into `sink`; what became of it is the Outcome."""
        plan = NO_REQUEST_PLAN
        if self.traffic.active:
            # traffic rules that depend on the request (edge.traffic), hits included
            acting = self.traffic.gate(request, sink)
            if acting is not None:
                gated = await acting
                if isinstance(gated, Outcome):
                    return gated
                request, plan = gated
        if request.method == "GET" and not body.exists and not plan.bypass_cache:
            hot = self.hot.hit(request, sink)
            if hot is not None:
                return hot
        host = request_host(request)
        service = self._hosts.get(host)
        if service is None:
            self.metrics.refused.inc()
            return error_response(
                sink,
                421,
                f"this CDN does not serve the host {host[:64]!r}",
                refused("host-not-served"),
                self.options.node_name,
            )
        # RFC 9110 15.2: 1xx answers of upstream fetches for this request go on to it
        relay_informational_to(sink.informational)
        if self.onward.loop_token in loop_tokens(request.headers):
            return error_response(
                sink,
                508,
                "request loop detected (CDN-Loop)",
                refused("loop"),
                self.options.node_name,
            )
        if not origin_form(request.target).startswith("/"):
            return refuse(
                sink, 400, "the request target must be a path or an absolute URL", "target"
            )
        if request.method in _NO_BODY_METHODS and body.exists:
            # A cached answer is shared by everyone who asks for the key, and fills never
            # send a body, so a body could only change the answer without changing the
            # key (RFC 9110 9.3.1: "content received in a GET request has no generally
            # defined semantics" and may be rejected). Bodies on OPTIONS and DELETE,
            # which always pass, are forwarded with framing of our own.
            return refuse(sink, 400, f"a {request.method} request must not have a body", "body")
        kind = policy.classify_request(request.method, request.headers)
        if kind is not RequestKind.CACHEABLE or plan.bypass_cache:
            return await self.onward.pass_through(
                request, sink, service, host, body=body, invalidate=kind is RequestKind.INVALIDATING
            )
        for _ in range(MAX_RESTARTS):
            try:
                answer = await self._cacheable(request, sink, service, host, plan)
            except EntryGone as gone:
                # the memory tier pointed at a body file that is gone: look again
                self.store.forget_cached(gone.key)
                continue
            if not isinstance(answer, _Restart):
                return answer
        # the store kept changing under this request (variants replaced, bodies
        # evicted): answer it straight from upstream rather than loop
        return await self.onward.pass_through(request, sink, service, host, detail="restarts")

    async def _cacheable(
        self,
        request: RequestHead,
        sink: ResponseSink,
        service: Service,
        host: str,
        plan: RequestPlan = NO_REQUEST_PLAN,
    ) -> Outcome | _Restart:
        """Look the request up, decide (policy.decide), and serve, revalidate or fill."""
        target = normalize_target(
            keyed_target(plan, origin_form(request.target)),
            service.cache_key.sort_query,
            service.cache_key.drop_params,
        )
        suffix = cache_key_suffix(plan, request.headers)
        key = primary_key(service.name, host, target) + suffix
        if not suffix:
            self.hot.remember(request.headers.get("Host"), request.target, key)
        entry = self.store.peek(key)
        from_disk = entry is None  # not held in the memory tier: read from the store
        if from_disk:
            entry = await self.store.get(key)
        fwd_missing = "uri-miss"
        if entry is not None and isinstance(entry.meta, VaryIndex):
            key = variant_key(key, entry.meta.fields, end_to_end_fields(request.headers))
            entry = self.store.peek(key)
            from_disk = entry is None
            if from_disk:
                entry = await self.store.get(key)
            fwd_missing = "vary-miss"
        meta = entry.meta if entry is not None and isinstance(entry.meta, ObjectMeta) else None
        now = self.clock()
        verdict = purge_verdict(self.rules, meta, now) if meta is not None else PurgeVerdict.NONE
        authorization = "Authorization" in request.headers
        decision = policy.decide(
            meta, now, verdict, self._purged_at(meta, verdict), authorization=authorization
        )
        if service.honor_request_cache_control and "Cache-Control" in request.headers:
            decision = policy.apply_request_directives(
                decision, meta, request_directives(request.headers)
            )
        match decision.action:
            case Action.SERVE:
                assert entry is not None and meta is not None
                if from_disk:
                    self.metrics.disk_hits.inc()
                return await self.respond.from_store(
                    request, sink, entry, meta, decision, Outcome(hit=True, ttl=int(decision.ttl))
                )
            case Action.SERVE_STALE_REVALIDATE:
                assert entry is not None and meta is not None
                if from_disk:
                    self.metrics.disk_hits.inc()
                self._revalidate_in_background(request, service, host, target, key, entry)
                return await self.respond.from_store(
                    request,
                    sink,
                    entry,
                    meta,
                    decision,
                    Outcome(hit=True, ttl=int(decision.ttl), detail="stale-while-revalidate"),
                    stale=True,
                )
            case Action.REVALIDATE:
                pass
            case Action.FETCH:
                entry = None
            case _:
                assert_never(decision.action)
        if transitions.only_if_cached(request.headers):
            return error_response(
                sink,
                504,
                "not in cache (only-if-cached)",
                refused("only-if-cached"),
                self.options.node_name,
            )
        refused_at = self.refusals.refused_at(key, now)
        if refused_at is not None:
            if self.rules.verdict(service.name, host, target, (), refused_at) is PurgeVerdict.NONE:
                return error_response(
                    sink,
                    502,
                    "the origin's body decodes past the object size limit",
                    refused("decode-limit"),
                    self.options.node_name,
                )
            self.refusals.forget(key)  # purged since: the operator wants a new fetch
        fwd = fwd_missing if meta is None else (decision.fwd or "miss")
        if service.early_hints and meta is not None and decision.action is Action.REVALIDATE:
            # the stored object still stands (being validated): its Links are hints
            self.respond.early_hints(sink, meta)
        if authorization and self.filler.joinable(key, service, host, target) is not None:
            # RFC 9111 3.5: another request's fill may answer without these credentials
            return await self.onward.pass_through(
                request, sink, service, host, detail="authorization"
            )
        return await self._through_fill(
            request, sink, service, host, target, key, entry, decision, fwd, verdict
        )

    def _refused(self, key: str) -> None:
        """A body of `key` decoded past its limit: refuse the key a while
        (edge/refusals.py), so a decompression bomb is not fetched and decoded again
        for every request."""
        self.refusals.refuse(key, self.clock())

    def _purged_at(self, meta: ObjectMeta | None, verdict: PurgeVerdict) -> float | None:
        """When the soft purge behind a STALE verdict was applied (None otherwise)."""
        if meta is None or verdict is not PurgeVerdict.STALE:
            return None
        return self.rules.soft_purged_at(
            meta.service, meta.host, meta.target, meta.surrogate_keys, meta.stored_at
        )

    async def _through_fill(
        self,
        request: RequestHead,
        sink: ResponseSink,
        service: Service,
        host: str,
        target: str,
        key: str,
        stale: StoredEntry | None,
        decision: Decision,
        fwd: str,
        verdict: PurgeVerdict,
    ) -> Outcome | _Restart:
        """Answer through the key's fill: what its head turned out to be decides."""
        self.metrics.misses.inc()
        fill = self.filler.joinable(key, service, host, target)
        collapsed = fill is not None
        if fill is None:
            fill = self.filler.start(
                self.onward.fill_job(request, service, host, target, key, stale)
            )
        fill.waiters += 1
        waited = time.perf_counter()
        # a GET reads the body next (HEAD answers with the head alone)
        head = await fill.head(whole=request.method != "HEAD")
        # the wait for the upstream's head, not for a small body's commit after it
        outcome = Outcome(
            fwd=fwd, collapsed=collapsed, upstream_seconds=max(0.0, fill.head_time - waited)
        )
        match head.kind:
            case HeadKind.PASS:
                detail = head.detail or "not-storable"
                if head.response is not None and fill.claim_pass():
                    return await self.respond.relay(
                        request,
                        sink,
                        head.response,
                        outcome._replace(detail=detail),
                        relayed_fields(service, "GET", host, target, request.headers),
                    )
                # a response not fit to share: this client goes upstream on its own
                return await self.onward.pass_through(request, sink, service, host, detail=detail)
            case HeadKind.NOT_MODIFIED:
                assert head.meta is not None
                entry = self.store.peek(key) or await self.store.get(key)
                if entry is None or not entry.bodies:
                    return await self.onward.pass_through(
                        request, sink, service, host, detail="revalidated-gone"
                    )
                ttl = head.meta.freshness_lifetime - head.meta.age(self.clock())
                return await self.respond.from_store(
                    request,
                    sink,
                    entry,
                    head.meta,
                    Decision(Action.SERVE, ttl=ttl),
                    outcome._replace(fwd_status=304, ttl=int(ttl)),
                    validated=True,
                )
            case HeadKind.ERROR:
                stale_meta = (
                    stale.meta if stale is not None and isinstance(stale.meta, ObjectMeta) else None
                )
                after = transitions.after_error(
                    stale_meta,
                    self.clock(),
                    verdict=verdict,
                    purged_at=self._purged_at(stale_meta, verdict),
                    unreachable=head.unreachable,
                    max_stale_when_unreachable=service.max_stale_when_unreachable,
                )
                match after:
                    case ServeStale(reason=reason):
                        assert stale is not None and stale_meta is not None
                        if reason == "stale-if-error":
                            self.metrics.stale_if_error.inc()
                        else:
                            self.metrics.stale_unreachable.inc()
                        return await self.respond.from_store(
                            request,
                            sink,
                            stale,
                            stale_meta,
                            decision,
                            outcome._replace(detail=reason),
                            stale=True,
                        )
                    case Error():
                        return self.respond.error_answer(sink, head, outcome)
                    case _:
                        assert_never(after)
            case HeadKind.STREAM:
                pass
            case _:
                assert_never(head.kind)
        assert head.meta is not None
        if head.length is None and head.meta.status == 200 and "Range" in request.headers:
            # RFC 9110 14.4: a 206 states the complete length, which a body sent without
            # one has only once it is whole: answer the range from the stored object
            if await fill.settled():
                return RESTART
            return await self.onward.pass_through(request, sink, service, host, detail="range")
        if fill.vary_fields and fill.store_key != variant_key(
            fill.key.split("\x1f", 1)[0], fill.vary_fields, end_to_end_fields(request.headers)
        ):
            # the response varies on a field this request sends differently: it is not
            # this client's variant; look again (the Vary index is stored by now)
            return RESTART
        return await self.respond.stream_fill(
            request, sink, fill, head, outcome._replace(stored=True)
        )

    def _revalidate_in_background(
        self,
        request: RequestHead,
        service: Service,
        host: str,
        target: str,
        key: str,
        entry: StoredEntry,
    ) -> None:
        """RFC 5861 3: one background revalidation, however many stale hits ask for it."""
        if self.filler.joinable(key, service, host, target) is None:
            self.filler.revalidate(self.onward.fill_job(request, service, host, target, key, entry))

    def _corrupt_found(self, key: str) -> None:
        """The store found a body whose checksum fails (it has dropped the object)."""
        self.metrics.store_corrupt.inc()
        self.hot.forget(key)
        log.error("stored body of %s failed its checksum: object dropped", key)

    async def close(self, grace: float = 5.0) -> None:
        """Let fills in flight finish for up to `grace` seconds, then cancel the rest
        (a cancelled fill is discarded, never stored half)."""
        await self.filler.close(grace)


#: Methods whose requests may not carry a body here (see Engine.handle).
_NO_BODY_METHODS = frozenset({"GET", "HEAD"})
