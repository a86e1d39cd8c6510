"""Traffic rules evaluated: the matcher, the plans, origin-group choice, rate limiting.

A service's rules (`fleet.rules.TrafficRules`) are compiled once, at load, into a
`CompiledRules`: each rule's match becomes one predicate, and the rules are split by
phase. Request-phase actions (respond, redirect, bypass, cache key, request headers,
origin group) depend on the request and run on every request, hits included;
response-phase actions (TTL, stale windows, response headers) run once, when an
answer is stored, so a hit carries them without evaluating anything (the way
Fastly's `beresp.*` and Varnish's `vcl_backend_response` do). First match wins per
action kind: the first matching rule that sets an action decides it.

Everything here is pure: no I/O, no clock (`now` is an argument), no randomness (the
caller draws a number for the weighted choice).

The matcher's compilation is `rule_match.py`, the plans and the field edits they make
`rule_actions.py`, rate limiting `rate_limits.py`; this module evaluates (a compiled
rule set, its plans per request and per answer, the origin-group choice) and exports
all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from edge.cache.headers import Headers
from edge.cache.keys import origin_form
from edge.cache.rate_limits import (
    MAX_BUCKETS,
    RateLimiter,
    in_networks,
    limit_key,
    retry_after,
)
from edge.cache.rule_actions import (
    CDN_FRESHNESS_FIELDS,
    NO_REQUEST_PLAN,
    NO_RESPONSE_PLAN,
    HeaderPairs,
    Request,
    RequestPlan,
    ResponsePlan,
    apply_response_plan,
    key_suffix,
    redirect_location,
    rewrite_request_headers,
)
from edge.cache.rule_match import (
    MAX_METHOD_TABLES,
    Compiled,
    Predicate,
    SegmentIndex,
    compile_match,
    cookie_value,
    rule_path,
)
from fleet.rules import OriginGroup, Rule, TrafficRules

__all__ = [
    "CDN_FRESHNESS_FIELDS",
    "MAX_BUCKETS",
    "MAX_COMPILED",
    "MAX_METHOD_TABLES",
    "NO_REQUEST_PLAN",
    "NO_RESPONSE_PLAN",
    "REQUEST_ACTIONS",
    "RESPONSE_ACTIONS",
    "Compiled",
    "CompiledRules",
    "HeaderPairs",
    "Predicate",
    "RateLimiter",
    "Request",
    "RequestPlan",
    "ResponsePlan",
    "SegmentIndex",
    "apply_response_plan",
    "choose_group",
    "compile_match",
    "compiled",
    "cookie_value",
    "group_origins",
    "in_networks",
    "key_suffix",
    "limit_key",
    "redirect_location",
    "retry_after",
    "rewrite_request_headers",
    "rule_path",
    "stored_fields",
    "weighted_pick",
]

#: actions decided per request (evaluated on hits too) and at storing time
REQUEST_ACTIONS = (
    "respond",
    "redirect",
    "bypass_cache",
    "cache_key",
    "set_request_headers",
    "remove_request_headers",
    "origin_group",
)
RESPONSE_ACTIONS = (
    "ttl",
    "stale_while_revalidate",
    "stale_if_error",
    "set_response_headers",
    "remove_response_headers",
)


class CompiledRules:
    """A service's rules, compiled once: evaluate per request and per stored answer."""

    def __init__(self, traffic: TrafficRules) -> None:
        self.traffic = traffic
        self._request = SegmentIndex(
            [r for r in traffic.rules if any(getattr(r, k) is not None for k in REQUEST_ACTIONS)]
        )
        self._response = SegmentIndex(
            [r for r in traffic.rules if any(getattr(r, k) is not None for k in RESPONSE_ACTIONS)]
        )
        self._limits = tuple((compile_match(lim.match), lim) for lim in traffic.rate_limits)
        self.groups = {g.name: g for g in traffic.origin_groups}
        #: whether anything must be evaluated per request (if not, a hit pays nothing)
        #: the request fields any match reads (a plan is a function of the method,
        #: host, target and these fields' values, so it may be remembered by them)
        self.header_fields = tuple(
            sorted(
                {r.match.header.name for r in traffic.rules if r.match.header is not None}
                | {x.match.header.name for x in traffic.rate_limits if x.match.header is not None}
            )
        )
        self.per_request = not self._request.empty or bool(self._limits)
        self.per_response = not self._response.empty

    def on_request(self, request: Request) -> RequestPlan:
        """The request-phase plan for `request` (first match wins per action kind)."""
        m, h, p, q, hd = request
        found: dict[str, object] | None = None
        for matches, rule in self._request.candidates(m, p):
            if matches(m, h, p, q, hd):
                if found is None:
                    found = {}
                _take(found, rule, REQUEST_ACTIONS)
                if len(found) == len(REQUEST_ACTIONS):
                    break
        limits = (
            tuple(lim for matches, lim in self._limits if matches(m, h, p, q, hd))
            if self._limits
            else ()
        )
        if found is None:
            if not limits:
                return NO_REQUEST_PLAN
            found = {}
        return RequestPlan(
            respond=found.get("respond"),  # type: ignore[arg-type]
            redirect=found.get("redirect"),  # type: ignore[arg-type]
            bypass_cache=bool(found.get("bypass_cache", False)),
            cache_key=found.get("cache_key"),  # type: ignore[arg-type]
            set_request_headers=found.get("set_request_headers", ()),  # type: ignore[arg-type]
            remove_request_headers=found.get("remove_request_headers", ()),  # type: ignore[arg-type]
            origin_group=found.get("origin_group"),  # type: ignore[arg-type]
            rate_limits=limits,
        )

    def on_response(self, request: Request) -> ResponsePlan:
        """The response-phase plan for the answer to `request`, applied before storing."""
        if self._response.empty:
            return NO_RESPONSE_PLAN
        m, h, p, q, hd = request
        found: dict[str, object] = {}
        for matches, rule in self._response.candidates(m, p):
            if matches(m, h, p, q, hd):
                _take(found, rule, RESPONSE_ACTIONS)
        if not found:
            return NO_RESPONSE_PLAN
        return ResponsePlan(
            ttl=found.get("ttl"),  # type: ignore[arg-type]
            stale_while_revalidate=found.get("stale_while_revalidate"),  # type: ignore[arg-type]
            stale_if_error=found.get("stale_if_error"),  # type: ignore[arg-type]
            set_response_headers=found.get("set_response_headers", ()),  # type: ignore[arg-type]
            remove_response_headers=found.get("remove_response_headers", ()),  # type: ignore[arg-type]
        )


def _take(found: dict[str, object], rule: Rule, kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        if kind not in found:
            value = getattr(rule, kind)
            if value is not None:
                found[kind] = value


#: compiled rules by the identity of their `TrafficRules` (hashing a frozen rule set
#: walks every rule, tens of microseconds for fifty; identity is one lookup)
_COMPILED: dict[int, tuple[TrafficRules, CompiledRules]] = {}
MAX_COMPILED = 256


def compiled(traffic: TrafficRules) -> CompiledRules:
    """The compiled form of `traffic`, made once per rule set loaded."""
    found = _COMPILED.get(id(traffic))
    if found is not None and found[0] is traffic:
        return found[1]
    rules = CompiledRules(traffic)
    if len(_COMPILED) >= MAX_COMPILED:
        _COMPILED.clear()
    # the rule set is kept with its compiled form, so its id is not reused meanwhile
    _COMPILED[id(traffic)] = (traffic, rules)
    return rules


def stored_fields(
    traffic: TrafficRules,
    host: str,
    target: str,
    request_headers: Headers,
    pairs: HeaderPairs,
    method: str = "GET",
) -> HeaderPairs:
    """An upstream answer's fields as stored (or relayed): the response-phase rules
    applied (the same `pairs` object back when no rule changes anything)."""
    rules = compiled(traffic)
    if not rules.per_response:
        return pairs
    path, query = rule_path(target)
    plan = rules.on_response(Request(method, host, path, query, request_headers))
    return apply_response_plan(plan, pairs)


# -- origin groups ----------------------------------------------------------------------
def choose_group(
    rules: CompiledRules,
    plan_group: str | None,
    headers: Headers,
    draw: float,
    healthy: Callable[[OriginGroup], bool],
) -> OriginGroup | None:
    """The origin group a request goes to; None: the service's own `origins`.

    A rule's `origin_group` first, then a group the request is pinned to (a header or
    cookie value: blue-green switching, sticky canaries), then the weighted split by
    `draw` in [0, 1). A group with no healthy origin is passed over and its share of
    the split goes to the others in proportion; if none is healthy, the split is made
    as configured (an outage answers the same; a recovery is seen).
    """
    if plan_group is not None:
        group = rules.groups.get(plan_group)
        if group is not None and healthy(group):
            return group
    weighted: list[OriginGroup] = []
    for group in rules.traffic.origin_groups:
        pin = group.pin
        if pin is not None:
            value = headers.get(pin.header) if pin.header else cookie_value(headers, pin.cookie)
            if value == pin.value and healthy(group):
                return group
        elif group.weight:
            weighted.append(group)
    if not weighted:
        return None
    live = [g for g in weighted if healthy(g)] or weighted
    return weighted_pick(live, draw)


def group_origins(
    traffic: TrafficRules,
    origins: tuple[str, ...],
    method: str,
    target: str,
    headers: Headers,
    available: Callable[[str], bool],
    draw: float,
) -> Collection[str] | None:
    """The origins a request may go to under a service's origin groups (None: no
    groups, all of them), health-aware through `available` (an origin URL is up);
    `origins` is the service's own list, for requests no group takes."""
    if not traffic.origin_groups:
        return None
    rules = compiled(traffic)
    plan_group = None
    if rules.per_request:
        path, query = rule_path(origin_form(target))
        host = (headers.get("Host") or "").rpartition(":")[0] or (headers.get("Host") or "")
        plan = rules.on_request(Request(method, host.lower(), path, query, headers))
        plan_group = plan.origin_group
    group = choose_group(
        rules, plan_group, headers, draw, lambda g: any(available(url) for url in g.origins)
    )
    return origins if group is None else group.origins


def weighted_pick(groups: list[OriginGroup], draw: float) -> OriginGroup:
    """The group whose slice of the cumulative weights `draw` (in [0, 1)) falls in."""
    total = sum(g.weight or 0 for g in groups)
    point = draw * total
    for group in groups:
        point -= group.weight or 0
        if point < 0:
            return group
    return groups[-1]
