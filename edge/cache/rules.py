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
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NamedTuple

from edge.cache.directives import TARGETED_FIELDS
from edge.cache.headers import Headers
from edge.cache.keys import normalize_path, origin_form, remove_dot_segments
from fleet.rules import (
    CacheKeyRule,
    OriginGroup,
    RateLimit,
    Redirect,
    Respond,
    Rule,
    RuleMatch,
    TrafficRules,
)

HeaderPairs = tuple[tuple[str, str], ...]

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
#: response fields a TTL override replaces: the ones that say how long this CDN keeps
#: an answer (RFC 9213 2.2: CDN-Cache-Control is read first and, when present, the
#: others are ignored by this cache while clients still see Cache-Control)
CDN_FRESHNESS_FIELDS = frozenset(TARGETED_FIELDS)
#: distinct client keys a rate limit tracks; beyond that, the fullest buckets go first
MAX_BUCKETS = 100_000
#: (method, path segment) candidate tables a rule index keeps
MAX_METHOD_TABLES = 1024

_SLASHES = re.compile(r"/{2,}")

Predicate = Callable[[str, str, str, str, Headers], bool]


class Request(NamedTuple):
    """The parts of a request rules look at: method, host (lowercase, no port), the
    normalised path, the raw query, and the header map (a named tuple: one is made
    per request)."""

    method: str
    host: str
    path: str
    query: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What the request-phase rules decided for one request."""

    respond: Respond | None = None
    redirect: Redirect | None = None
    bypass_cache: bool = False
    cache_key: CacheKeyRule | None = None
    set_request_headers: HeaderPairs = ()
    remove_request_headers: tuple[str, ...] = ()
    origin_group: str | None = None
    #: the rate limits whose match the request met
    rate_limits: tuple[RateLimit, ...] = ()

    @property
    def rewrites_request(self) -> bool:
        """Whether the request's headers change before they go upstream."""
        return bool(self.set_request_headers or self.remove_request_headers)


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """What the response-phase rules decided for an answer about to be stored."""

    ttl: float | None = None
    stale_while_revalidate: float | None = None
    stale_if_error: float | None = None
    set_response_headers: HeaderPairs = ()
    remove_response_headers: tuple[str, ...] = ()

    @property
    def changes_anything(self) -> bool:
        """Whether applying the plan changes an answer's fields."""
        return self != NO_RESPONSE_PLAN


NO_REQUEST_PLAN = RequestPlan()
NO_RESPONSE_PLAN = ResponsePlan()


def rule_path(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form target, the path normalised the way cache keys
    are (RFC 3986 6.2.2), so "/%61dmin" and "/x/../admin" meet a rule on "/admin";
    runs of slashes count as one (as nginx's merge_slashes and many origins do), so
    "//admin" cannot slip past a rule that an origin merging slashes would serve."""
    path, _, query = target.partition("?")
    path = remove_dot_segments(normalize_path(path))
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return path, query


def cookie_value(headers: Headers, name: str) -> str | None:
    """The value of cookie `name` in the request's Cookie fields (RFC 6265 5.4), or
    None; the first occurrence wins."""
    for line in headers.getall("cookie", []):
        for part in line.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key.strip() == name:
                return value.strip()
    return None


def compile_match(match: RuleMatch) -> Predicate:
    """A predicate for `match`, cheapest conditions first; the all-matching match
    compiles to a function that returns True at once."""
    checks: list[Predicate] = []
    if match.methods:
        methods = frozenset(match.methods)
        checks.append(lambda m, h, p, q, hd: m in methods)
    if match.path_prefix:
        prefix = match.path_prefix
        checks.append(lambda m, h, p, q, hd: p.startswith(prefix))
    if match.hosts:
        hosts = frozenset(match.hosts)
        checks.append(lambda m, h, p, q, hd: h in hosts)
    if match.query_param:
        param = match.query_param
        checks.append(lambda m, h, p, q, hd: _has_param(q, param))
    if match.path_regex is not None:
        search = match.path_regex.search
        checks.append(lambda m, h, p, q, hd: search(p) is not None)
    if match.header is not None:
        name, value_search = match.header.name, match.header.value_regex.search
        checks.append(lambda m, h, p, q, hd: _header_matches(hd, name, value_search))
    if not checks:
        return lambda m, h, p, q, hd: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda m, h, p, q, hd: first(m, h, p, q, hd) and second(m, h, p, q, hd)
    return lambda m, h, p, q, hd: all(c(m, h, p, q, hd) for c in checks)


def _has_param(query: str, name: str) -> bool:
    if not query:
        return False
    return any(part.partition("=")[0] == name for part in query.split("&"))


def _header_matches(headers: Headers, name: str, search: Callable[[str], object]) -> bool:
    value = headers.get(name)
    return value is not None and search(value) is not None


Compiled = tuple[tuple[Predicate, Rule], ...]


class SegmentIndex:
    """Rules indexed by the first path segment their `path_prefix` fixes.

    A rule on "/static/" can only match a path whose first segment is "static", so a
    request looks at the rules of its own first segment and those that fix none
    ("/admin" also matches "/administrator"; no prefix at all), in rule order: with
    many rules on distinct sections a request scans a handful, not all of them.
    """

    def __init__(self, rules: list[Rule]) -> None:
        compiled = [(compile_match(r.match), r) for r in rules]
        anywhere = [c for c in compiled if _segment(c[1].match) is None]
        by_segment: dict[str, list[tuple[Predicate, Rule]]] = {}
        for entry in compiled:
            segment = _segment(entry[1].match)
            if segment is not None:
                by_segment.setdefault(segment, []).append(entry)
        self.anywhere: Compiled = tuple(anywhere)
        self.by_segment: dict[str, Compiled] = {
            segment: tuple(sorted([*entries, *anywhere], key=lambda c: c[1].index))
            for segment, entries in by_segment.items()
        }
        self.empty = not compiled
        #: (method, segment or None) → the candidates less rules for other methods
        self._by_method: dict[tuple[str, str | None], Compiled] = {}

    def candidates(self, method: str, path: str) -> Compiled:
        """The rules that may match a `method` request for `path`, in rule order."""
        segment: str | None = path[1:].partition("/")[0]
        if segment not in self.by_segment:
            segment = None
        found = self._by_method.get((method, segment))
        if found is None:
            base = self.anywhere if segment is None else self.by_segment[segment]
            found = tuple(c for c in base if not c[1].match.methods or method in c[1].match.methods)
            if len(self._by_method) >= MAX_METHOD_TABLES:
                # methods are the client's to choose: the table stays bounded
                self._by_method.clear()
            self._by_method[(method, segment)] = found
        return found


def _segment(match: RuleMatch) -> str | None:
    """The first path segment a match's prefix fixes ("/static/img" → "static";
    "/admin" → None, as it also matches "/administrator")."""
    segment, slash, _ = match.path_prefix[1:].partition("/")
    return segment if slash else None


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


# -- actions --------------------------------------------------------------------------
def apply_response_plan(plan: ResponsePlan, pairs: HeaderPairs) -> HeaderPairs:
    """The upstream answer's fields as they are stored, with the plan applied.

    A TTL override becomes an Edgeshield-CDN-Cache-Control field (this CDN's own
    targeted field, RFC 9213 2), which it reads before every other freshness field and
    never shows a client: the origin's
    Cache-Control still reaches browsers, only this cache's lifetime changes (as with
    Fastly's beresp.ttl). The stale windows ride along in the same field (RFC 5861).
    """
    if not plan.changes_anything:
        return pairs
    removed = set(plan.remove_response_headers) | {n.lower() for n, _ in plan.set_response_headers}
    directives = []
    if plan.ttl is not None:
        removed |= CDN_FRESHNESS_FIELDS
        directives.append(f"max-age={int(plan.ttl)}")
    if plan.stale_while_revalidate is not None:
        directives.append(f"stale-while-revalidate={int(plan.stale_while_revalidate)}")
    if plan.stale_if_error is not None:
        directives.append(f"stale-if-error={int(plan.stale_if_error)}")
    out = [(n, v) for n, v in pairs if n.lower() not in removed]
    if directives and plan.ttl is None:
        # stale windows alone: added to the lifetime the origin gave, in the field
        # this cache reads, kept in its own field when the origin sent none
        out = _add_stale_windows(out, directives)
    elif directives:
        out.append(("Edgeshield-CDN-Cache-Control", ", ".join(directives)))
    out.extend(plan.set_response_headers)
    return tuple(out)


def _add_stale_windows(
    pairs: list[tuple[str, str]], directives: list[str]
) -> list[tuple[str, str]]:
    names = {n.lower() for n, _ in pairs}
    field = next((f for f in (*TARGETED_FIELDS[:2], "cache-control") if f in names), None)
    if field is None:
        return pairs
    return [(n, f"{v}, {', '.join(directives)}" if n.lower() == field else v) for n, v in pairs]


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


def rewrite_request_headers(plan: RequestPlan, pairs: HeaderPairs) -> HeaderPairs:
    """The request's fields after the plan's removals and settings (set replaces)."""
    removed = set(plan.remove_request_headers) | {n.lower() for n, _ in plan.set_request_headers}
    kept = tuple((n, v) for n, v in pairs if n.lower() not in removed)
    return kept + plan.set_request_headers


def redirect_location(redirect: Redirect, host: str, path: str, query: str) -> str:
    """The Location of a redirect rule for this request: `$host`, `$path` and
    `$query` (with its "?" when there is one) replaced."""
    return (
        redirect.to.replace("$host", host)
        .replace("$path", path)
        .replace("$query", f"?{query}" if query else "")
    )


def key_suffix(rule: CacheKeyRule, headers: Headers) -> str:
    """What a cache_key rule adds to the key: the named headers' and cookies' values."""
    parts = [f"h:{name}={','.join(headers.getall(name, []))}" for name in rule.include_headers]
    parts += [f"c:{name}={cookie_value(headers, name) or ''}" for name in rule.include_cookies]
    return "\x1e".join(parts)


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


# -- rate limits ------------------------------------------------------------------------
def limit_key(limit: RateLimit, peer: str | None, headers: Headers) -> str:
    """The client a rate limit counts this request against (empty header or cookie:
    counted together, as one client)."""
    if limit.key == "client_ip":
        return peer or ""
    if limit.key == "header":
        return headers.get(limit.key_name) or ""
    return cookie_value(headers, limit.key_name) or ""


class RateLimiter:
    """Token buckets (one per rate limit and client key), counted on this node only.

    Each bucket holds up to `burst` tokens and refills at `rate` per second; a request
    takes one. State is two floats per bucket, refilled lazily at `take`, so an idle
    client costs nothing; at most `max_buckets` are kept (full buckets go first, which
    forgets nothing: a full bucket is what a new one is).
    """

    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        #: (limit index, client) → (tokens, when counted, the limit's rate and burst)
        self._buckets: dict[tuple[int, str], tuple[float, float, float, int]] = {}
        self._max = max_buckets

    def take(self, limit: RateLimit, client: str, now: float) -> float:
        """Take a token: 0.0 if the request may go now, else the seconds until one is
        there (the token is then not taken; a delayed request takes it again later)."""
        bucket = (limit.index, client)
        rate, burst = limit.rate, limit.burst
        tokens, at, _, _ = self._buckets.get(bucket, (float(burst), now, rate, burst))
        tokens = min(float(burst), tokens + max(0.0, now - at) * rate)
        if bucket not in self._buckets and len(self._buckets) >= self._max:
            self._evict(now)
        if tokens >= 1.0:
            self._buckets[bucket] = (tokens - 1.0, now, rate, burst)
            return 0.0
        self._buckets[bucket] = (tokens, now, rate, burst)
        return (1.0 - tokens) / rate

    def _evict(self, now: float) -> None:
        """Drop the buckets that have refilled (or the older half if none has)."""
        full = [
            k
            for k, (tokens, at, rate, burst) in self._buckets.items()
            if tokens + (now - at) * rate >= burst
        ]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait: float) -> int:
    """Retry-After seconds (RFC 9110 10.2.3) for a wait: whole seconds, at least 1."""
    return max(1, math.ceil(wait))


def in_networks(
    peer: str | None, networks: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether `peer` is an address inside one of `networks`."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in networks)
