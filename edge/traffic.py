"""The traffic rules' glue: what the engine, the filler and the origin pool call.

The decisions are `edge.cache.rules` (pure); this module carries them out against a
request and a sink: rules that answer by themselves (respond, redirect), rate limits
(429 with Retry-After, or a bounded delay), request header rewrites, the PURGE
method, the key suffix of a `cache_key` rule, the fields of an answer about to be
stored, and the origin group a request goes to. One call site per concern in the
engine, the filler and the pool, so the request path reads as before.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from multidict import CIMultiDict

from edge.cache.headers import Headers
from edge.cache.keys import normalize_target, origin_form, primary_key
from edge.cache.purge import PurgeRules
from edge.cache.rules import (
    NO_REQUEST_PLAN,
    CompiledRules,
    RateLimiter,
    Request,
    RequestPlan,
    compiled,
    in_networks,
    key_suffix,
    limit_key,
    redirect_location,
    retry_after,
    rewrite_request_headers,
    rule_path,
    stored_fields,
)
from edge.forwarding import node_token, request_host
from edge.front.types import RequestHead, ResponseSink
from edge.options import EngineOptions
from edge.outcome import Outcome, refused
from edge.responding import error_response
from edge.store import ObjectStore
from fleet.config import Service

log = logging.getLogger("edgeshield.traffic")

#: the longest a "delay" rate limit holds a request; past that it is refused (429), so
#: a flood cannot park an unbounded number of requests on the node
MAX_DELAY = 5.0
#: raw Host values remembered per gate (each → its service's compiled rules)
MAX_HOSTS = 4096
#: request plans remembered, and the longest target one is remembered for
MAX_PLANS = 20_000
MAX_REMEMBERED_TARGET = 1024
HeaderPairs = tuple[tuple[str, str], ...]


class _Route(NamedTuple):
    """Where a Host leads: the host as keyed, its service, the service's rules."""

    host: str
    service: Service
    rules: CompiledRules


class _Decided(NamedTuple):
    """A request's plan with what its actions need (path and query for a redirect)."""

    route: _Route | None
    plan: RequestPlan
    path: str = ""
    query: str = ""


PlanKey = tuple[str | None, ...]


def _plan_key(fields: tuple[str, ...]) -> Callable[[RequestHead], PlanKey]:
    """How a request's plan is remembered: method, Host, target and the values of
    `fields` (the ones rule matches read), built without a loop for the usual cases."""
    if not fields:
        return lambda r: (r.method, r.headers.get("Host"), r.target)
    if len(fields) == 1:
        (field,) = fields
        return lambda r: (r.method, r.headers.get("Host"), r.target, r.headers.get(field))
    return lambda r: (r.method, r.headers.get("Host"), r.target, *map(r.headers.get, fields))


#: what `TrafficGate.gate` gives when a rule applies: awaited, an answer or the
#: request as it goes on with its plan
Acting = Coroutine[Any, Any, "Outcome | tuple[RequestHead, RequestPlan]"]


class TrafficGate:
    """The request phase of a node's traffic rules, and the PURGE method."""

    def __init__(
        self,
        services: tuple[Service, ...],
        options: EngineOptions,
        store: ObjectStore,
        purge_rules: PurgeRules,
        clock: Callable[[], float],
    ) -> None:
        self.options = options
        self.store = store
        self.purge_rules = purge_rules
        self.clock = clock
        self.limiter = RateLimiter()
        self._services = {host: s for s in services for host in s.hosts}
        self._purge_networks = {
            s.name: [ipaddress.ip_network(n, strict=False) for n in s.traffic.purge_method_sources]
            for s in services
        }
        #: whether any service has rules to evaluate per request or takes PURGE; if
        #: not, the engine never calls the gate
        self.active = any(
            compiled(s.traffic).per_request or s.traffic.purge_method for s in services
        )
        self._by_raw_host: dict[str | None, _Route | None] = {}
        #: plans remembered by (method, Host, target, the fields matches read): a hot
        #: hit pays one lookup, not the rules (bounded; emptied when full)
        self._plans: dict[PlanKey, _Decided] = {}
        self._plan_key = _plan_key(
            tuple(sorted({f for s in services for f in compiled(s.traffic).header_fields}))
        )

    def _lookup(self, request: RequestHead) -> _Route | None:
        """The request's host, service and rules, remembered per raw Host value (an
        absolute-form target names its own host, so it is looked up every time)."""
        origin_form_target = request.target.startswith("/")
        raw = request.headers.get("Host")
        if origin_form_target and raw in self._by_raw_host:
            return self._by_raw_host[raw]
        host = request_host(request)
        service = self._services.get(host)
        found = _Route(host, service, compiled(service.traffic)) if service is not None else None
        if origin_form_target:
            if len(self._by_raw_host) >= MAX_HOSTS:
                self._by_raw_host.clear()
            self._by_raw_host[raw] = found
        return found

    def gate(self, request: RequestHead, sink: ResponseSink) -> Acting | None:
        """None when no rule applies to the request (the usual case, decided from a
        remembered plan without awaiting anything); else the work that answers it (a
        rule's answer, PURGE, a rate limit's 429) or gives the request as it goes on
        (headers rewritten, after a rate limit's delay) and its plan."""
        decided = self._decided(request)
        if decided.plan is NO_REQUEST_PLAN and request.method != "PURGE":
            return None
        return self._act(request, sink, decided)

    def passes(self, request: RequestHead) -> bool:
        """Whether no rule acts on `request` (`gate` would return None): what lets a
        front answer it from its own hot lane without the engine."""
        return self._decided(request).plan is NO_REQUEST_PLAN and request.method != "PURGE"

    def _decided(self, request: RequestHead) -> _Decided:
        """The request's plan, remembered per (method, Host, target, fields read)."""
        memo = self._plan_key(request)
        decided = self._plans.get(memo)
        if decided is None:
            decided = self._decide(request)
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            if len(request.target) <= MAX_REMEMBERED_TARGET:
                self._plans[memo] = decided
        return decided

    async def _act(
        self, request: RequestHead, sink: ResponseSink, decided: _Decided
    ) -> Outcome | tuple[RequestHead, RequestPlan]:
        """Carry out a request's plan (see `gate`)."""
        plan = decided.plan
        route = decided.route
        if route is None:
            return request, NO_REQUEST_PLAN
        host, service, _ = route
        if request.method == "PURGE" and service.traffic.purge_method:
            return await self._purge(request, sink, service)
        if plan is NO_REQUEST_PLAN:
            return request, plan
        path, query = decided.path, decided.query
        if plan.rate_limits and not self.options.downstream_is_cdn:
            # counted where clients connect (edges); a shield sees edges, not clients
            limited = await self._rate_limit(request, sink, plan)
            if limited is not None:
                return limited
        if plan.respond is not None:
            headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "text/plain; charset=utf-8"})
            headers["Cache-Status"] = f"{self.options.node_name}; detail=rule-respond"
            sink.send(plan.respond.status, headers, plan.respond.body.encode())
            return Outcome(detail="rule-respond")
        if plan.redirect is not None:
            location = redirect_location(plan.redirect, host, path, query)
            headers = CIMultiDict({"Location": location, "Content-Length": "0"})
            headers["Cache-Status"] = f"{self.options.node_name}; detail=rule-redirect"
            sink.send(plan.redirect.status, headers, b"")
            return Outcome(detail="rule-redirect")
        if plan.rewrites_request:
            pairs = rewrite_request_headers(plan, tuple(request.headers.items()))
            request = request._replace(headers=CIMultiDict(pairs))
        return request, plan

    def _decide(self, request: RequestHead) -> _Decided:
        """The plan of a request not seen before (see `_plans`)."""
        route = self._lookup(request)
        if route is None or not route.rules.per_request:
            return _Decided(route, NO_REQUEST_PLAN)
        target = request.target
        path, query = rule_path(target if target.startswith("/") else origin_form(target))
        plan = route.rules.on_request(
            Request(request.method, route.host, path, query, request.headers)
        )
        return _Decided(route, plan, path, query)

    async def _rate_limit(
        self, request: RequestHead, sink: ResponseSink, plan: RequestPlan
    ) -> Outcome | None:
        """None if every matching limit lets the request go (after a delay, for
        "delay" limits); else the 429 it got."""
        for limit in plan.rate_limits:
            client = limit_key(limit, request.peer, request.headers)
            waited = 0.0
            while True:
                wait = self.limiter.take(limit, client, self.clock())
                if wait <= 0:
                    break
                if limit.action == "reject" or waited + wait > MAX_DELAY:
                    # RFC 6585 4: 429 Too Many Requests, with how long to wait
                    return error_response(
                        sink,
                        429,
                        "too many requests",
                        refused("rate-limited"),
                        self.options.node_name,
                        retry_after=retry_after(wait),
                    )
                await asyncio.sleep(wait)
                waited += wait
        return None

    async def _purge(self, request: RequestHead, sink: ResponseSink, service: Service) -> Outcome:
        """PURGE of one URL on this node (Varnish's habit): off unless the service
        turns it on (else PURGE goes on like any other method, as it always did), then
        only from `purge_method_sources` or with the node secret."""
        node = self.options.node_name
        allowed = in_networks(request.peer, self._purge_networks[service.name]) or (
            self._holds_node_secret(request.headers.get("Authorization"))
        )
        if not allowed:
            return error_response(sink, 403, "PURGE not allowed", refused("purge-refused"), node)
        host = request_host(request)
        policy = service.cache_key
        target = normalize_target(
            origin_form(request.target), policy.sort_query, policy.drop_params
        )
        await self.purge_rules.invalidate_everywhere(service.name, host, target, self.clock())
        await self.store.delete(primary_key(service.name, host, target))
        log.info("PURGE %s%s from %s", host, target[:200], request.peer)
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "text/plain; charset=utf-8"})
        sink.send(200, headers, b"purged\n")
        return Outcome(detail="purged")

    def _holds_node_secret(self, authorization: str | None) -> bool:
        """`Authorization: Bearer <node secret>`, checked against the node token derived
        from the secret (so the engine never holds the secret), in constant time."""
        token = self.options.node_token
        if not token or authorization is None or not authorization.startswith("Bearer "):
            return False
        return hmac.compare_digest(node_token(authorization[7:]), token)


def relayed_fields(
    service: Service, method: str, host: str, target: str, headers: Headers
) -> Callable[[HeaderPairs], HeaderPairs] | None:
    """What a relayed (not stored) answer's fields go through: the same response
    rules as a stored answer's, so a bypassed path gets its headers too; None when
    the service has no response rules."""
    traffic = service.traffic
    if not compiled(traffic).per_response:
        return None

    def fields(pairs: HeaderPairs) -> HeaderPairs:
        return stored_fields(traffic, host, target, headers, pairs, method)

    return fields


def cache_key_suffix(plan: RequestPlan, headers: Headers) -> str:
    """What the plan's cache_key rule adds to the primary key ("" for none)."""
    if plan.cache_key is None or not (
        plan.cache_key.include_headers or plan.cache_key.include_cookies
    ):
        return ""
    return "\x1e" + key_suffix(plan.cache_key, headers)


def keyed_target(plan: RequestPlan, target: str) -> str:
    """The target as keyed and fetched: without its query under `ignore_query` (the
    origin is asked for what the key names, so no query can poison the entry)."""
    if plan.cache_key is not None and plan.cache_key.ignore_query:
        return target.partition("?")[0]
    return target
