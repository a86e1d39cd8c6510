"""A service's traffic rules in the fleet file: their schema and their validation.

`[[services.rules]]` (match → actions, first match wins per action kind),
`[[services.origin_groups]]` (weighted or pinned sets of origins),
`[[services.rate_limits]]` (token buckets per client key) and the `purge_method`
keys. Every mistake names the service, the entry's index and the key, because a rule
engine whose typo is found in production is worse than none; regexes are compiled
here, once, at load (the evaluation is `edge.cache.rules`). A rule that can never
match because an earlier one always does is not an error but a warning, which
`edgeshield check` prints (`TrafficRules.warnings`).

This module imports nothing of ours at run time: `fleet.config` calls it with its
own table reader, so the two cannot import each other in a circle.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet.config import _Table

__all__ = [
    "ACTION_KEYS",
    "CacheKeyRule",
    "GroupPin",
    "HeaderMatch",
    "OriginGroup",
    "RateLimit",
    "Redirect",
    "Respond",
    "Rule",
    "RuleMatch",
    "TrafficRules",
    "parse_duration",
    "parse_rate",
    "parse_traffic",
]

#: every action a rule may carry; anything else in a rule is an unknown action
ACTION_KEYS = (
    "ttl",
    "stale_while_revalidate",
    "stale_if_error",
    "bypass_cache",
    "cache_key",
    "set_request_headers",
    "remove_request_headers",
    "set_response_headers",
    "remove_response_headers",
    "redirect",
    "respond",
    "origin_group",
)
#: RFC 9110 15.4: the redirect statuses a rule may send
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
#: bounds on what a rule may make a node send, so a fleet file cannot become a vector
MAX_RESPOND_BODY = 4096
MAX_HEADER_VALUE = 1024
#: fields no rule may set or remove: framing and hop-by-hop fields (RFC 9110 7.6.1,
#: RFC 9112 6), which decide where a message ends and so are ours alone, and the
#: fields by which tiers route and find loops (Host, Via, CDN-Loop, Cache-Status)
PROTECTED_FIELDS = frozenset(
    {
        "connection",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "host",
        "via",
        "cdn-loop",
        "cache-status",
        "age",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_RATE_UNITS |= {"h": 3600, "hour": 3600}


def parse_duration(value: object) -> float:
    """Seconds from an integer or a string such as "90", "30s", "5m", "1h", "7d"."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 3600 or "1h"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError('expected a duration such as 3600 or "1h"')
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value[:40]!r} is not a duration (use s, m, h or d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_rate(value: object) -> float:
    """Tokens per second from "100/s", "600/m" or "3600/h"; a bare number has no unit
    and is refused (is "100" per second or per minute? the file must say)."""
    if not isinstance(value, str):
        raise ValueError('expected a rate with its unit, such as "100/s" or "600/m"')
    match = _RATE.match(value)
    if match is None:
        raise ValueError(
            f'{value[:40]!r} is not a rate with a unit (such as "100/s", "600/m", "10/h")'
        )
    rate = float(match.group(1)) / _RATE_UNITS[match.group(2)]
    if rate <= 0:
        raise ValueError("a rate must be above 0")
    return rate


@dataclass(frozen=True)
class HeaderMatch:
    """A request header whose value must match a regex (searched, not anchored)."""

    name: str
    value_regex: re.Pattern[str]


@dataclass(frozen=True)
class RuleMatch:
    """What a request must be for a rule to apply: every condition given (AND)."""

    path_prefix: str = ""
    path_regex: re.Pattern[str] | None = None
    methods: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    header: HeaderMatch | None = None
    query_param: str = ""

    @property
    def always(self) -> bool:
        """No condition at all: every request matches."""
        return self == _ALWAYS

    def covers(self, other: RuleMatch) -> bool:
        """Every request `other` matches, this matches too (a conservative test: a
        False answer may still be a cover; a True one never is wrong)."""
        if self.path_prefix and not other.path_prefix.startswith(self.path_prefix):
            return False
        if self.path_regex is not None and (
            other.path_regex is None or other.path_regex.pattern != self.path_regex.pattern
        ):
            return False
        if self.methods and not (other.methods and set(other.methods) <= set(self.methods)):
            return False
        if self.hosts and not (other.hosts and set(other.hosts) <= set(self.hosts)):
            return False
        if self.header is not None and (
            other.header is None
            or other.header.name != self.header.name
            or other.header.value_regex.pattern != self.header.value_regex.pattern
        ):
            return False
        return not self.query_param or self.query_param == other.query_param


_ALWAYS = RuleMatch()


@dataclass(frozen=True)
class CacheKeyRule:
    """How the matching requests are keyed: without the query, or with more in it."""

    ignore_query: bool = False
    include_headers: tuple[str, ...] = ()
    include_cookies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Redirect:
    """Answer with a redirect; `$host`, `$path` and `$query` in `to` are replaced."""

    to: str
    status: int = 301


@dataclass(frozen=True)
class Respond:
    """Answer with a fixed status and short body, without going upstream."""

    status: int
    body: str = ""


@dataclass(frozen=True)
class Rule:
    """One `[[services.rules]]` entry: a match and the actions it sets (None: unset)."""

    index: int
    match: RuleMatch = _ALWAYS
    ttl: float | None = None
    stale_while_revalidate: float | None = None
    stale_if_error: float | None = None
    bypass_cache: bool | None = None
    cache_key: CacheKeyRule | None = None
    set_request_headers: tuple[tuple[str, str], ...] | None = None
    remove_request_headers: tuple[str, ...] | None = None
    set_response_headers: tuple[tuple[str, str], ...] | None = None
    remove_response_headers: tuple[str, ...] | None = None
    redirect: Redirect | None = None
    respond: Respond | None = None
    origin_group: str | None = None

    @property
    def actions(self) -> tuple[str, ...]:
        """The action kinds this rule sets."""
        return tuple(k for k in ACTION_KEYS if getattr(self, k) is not None)


@dataclass(frozen=True)
class GroupPin:
    """The request header or cookie whose value pins a client to an origin group."""

    header: str = ""
    cookie: str = ""
    value: str = ""


@dataclass(frozen=True)
class OriginGroup:
    """A named set of origins taking `weight` percent of traffic, or the clients a
    header or cookie pins to it (blue-green switching, sticky canaries)."""

    name: str
    origins: tuple[str, ...]
    weight: int | None = None
    pin: GroupPin | None = None


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per client key for the matching requests, counted per node."""

    index: int
    match: RuleMatch
    #: "client_ip", "header", or "cookie" (then `key_name` says which)
    key: str
    key_name: str
    #: tokens per second, and the bucket's size
    rate: float
    burst: int
    #: "reject" (429 with Retry-After) or "delay" (held until a token is there)
    action: str = "reject"


@dataclass(frozen=True)
class TrafficRules:
    """A service's rules, origin groups, rate limits and PURGE method settings."""

    rules: tuple[Rule, ...] = ()
    origin_groups: tuple[OriginGroup, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    #: accept the PURGE method (one URL, on this node) on the traffic port
    purge_method: bool = False
    #: CIDRs a PURGE is accepted from without the node secret
    purge_method_sources: tuple[str, ...] = ()
    #: what `check` should say but need not refuse (shadowed rules)
    warnings: tuple[str, ...] = field(default=(), compare=False)


def parse_traffic(t: _Table, origin_pattern: re.Pattern[str]) -> TrafficRules:
    """The traffic keys of one `[[services]]` table; ConfigError names the place."""
    groups = tuple(
        _group(g.named(), origin_pattern)
        for g in t.tables("origin_groups", f"{t.where} origin_groups")
    )
    _check_groups(t, groups)
    group_names = {g.name for g in groups}
    rules = tuple(
        _rule(r, i + 1, group_names) for i, r in enumerate(t.tables("rules", f"{t.where} rules"))
    )
    limits = tuple(
        _rate_limit(r, i + 1)
        for i, r in enumerate(t.tables("rate_limits", f"{t.where} rate_limits"))
    )
    sources = t.strings("purge_method_sources")
    for network in sources:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise t.error(
                "purge_method_sources", f"{network[:60]!r} is not a CIDR network"
            ) from None
    return TrafficRules(
        rules=rules,
        origin_groups=groups,
        rate_limits=limits,
        purge_method=t.get("purge_method", bool, False),
        purge_method_sources=sources,
        warnings=tuple(_shadowed(t.where, rules)),
    )


def _match(t: _Table) -> RuleMatch:
    m = t.table("match", f"{t.where} match")
    if m is None:
        return _ALWAYS
    prefix = m.text("path_prefix", "")
    if prefix and not prefix.startswith("/"):
        raise m.error("path_prefix", "must start with /")
    regex = _regex(m, "path_regex", m.text("path_regex", ""))
    methods = tuple(x.upper() for x in m.strings("methods"))
    for method in methods:
        if not _TOKEN.match(method):
            raise m.error("methods", f"{method[:40]!r} is not a method")
    hosts = tuple(h.lower() for h in m.strings("hosts"))
    header = None
    header_table = m.table("header", f"{m.where} header")
    if header_table is not None:
        name = header_table.text("name", required=True)
        if not _TOKEN.match(name):
            raise header_table.error("name", f"{name[:40]!r} is not a header name")
        pattern = _regex(header_table, "value_regex", header_table.text("value_regex", ""))
        header = HeaderMatch(name.lower(), pattern or re.compile(""))
        header_table.reject_unknown()
    query_param = m.text("query_param", "")
    m.reject_unknown()
    return RuleMatch(prefix, regex, methods, hosts, header, query_param)


def _regex(t: _Table, key: str, text: str) -> re.Pattern[str] | None:
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise t.error(key, f"is not a valid regular expression: {exc}") from None


def _rule(t: _Table, index: int, group_names: set[str]) -> Rule:
    match = _match(t)
    unknown = sorted(set(t.data) - set(ACTION_KEYS) - {"match"})
    if unknown:
        raise t.error(unknown[0], f"is not a known action (one of: {', '.join(ACTION_KEYS)})")
    kwargs: dict[str, Any] = {}
    for key in ("ttl", "stale_while_revalidate", "stale_if_error"):
        if key in t.data:
            kwargs[key] = _duration(t, key)
    if "bypass_cache" in t.data:
        kwargs["bypass_cache"] = t.get("bypass_cache", bool)
    key_table = t.table("cache_key", f"{t.where} cache_key")
    if key_table is not None:
        cookies = key_table.strings("include_cookies")
        kwargs["cache_key"] = CacheKeyRule(
            ignore_query=key_table.get("ignore_query", bool, False),
            include_headers=tuple(h.lower() for h in _names(key_table, "include_headers")),
            include_cookies=cookies,
        )
        key_table.reject_unknown()
    for key in ("set_request_headers", "set_response_headers"):
        if key in t.data:
            kwargs[key] = _header_values(t, key)
    for key in ("remove_request_headers", "remove_response_headers"):
        if key in t.data:
            kwargs[key] = tuple(h.lower() for h in _names(t, key))
    redirect_table = t.table("redirect", f"{t.where} redirect")
    if redirect_table is not None:
        to = redirect_table.text("to", required=True)
        if not re.match(r"^https?://[^/\s]+", to):
            raise redirect_table.error("to", "must be an absolute URL with a scheme (https://…)")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in to):
            raise redirect_table.error("to", "must not contain spaces or control characters")
        status = redirect_table.integer("status", 301)
        if status not in REDIRECT_STATUSES:
            raise redirect_table.error("status", "must be 301, 302, 303, 307 or 308")
        kwargs["redirect"] = Redirect(to, status)
        redirect_table.reject_unknown()
    respond_table = t.table("respond", f"{t.where} respond")
    if respond_table is not None:
        status = respond_table.integer("status", 403)
        if not 200 <= status <= 599:
            raise respond_table.error("status", "must be between 200 and 599")
        body = respond_table.text("body", "")
        if len(body.encode()) > MAX_RESPOND_BODY:
            raise respond_table.error("body", f"must be at most {MAX_RESPOND_BODY} bytes")
        kwargs["respond"] = Respond(status, body)
        respond_table.reject_unknown()
    if "origin_group" in t.data:
        group = t.text("origin_group")
        if group not in group_names:
            raise t.error("origin_group", f"no origin group named {group[:60]!r} in this service")
        kwargs["origin_group"] = group
    if kwargs.get("redirect") and kwargs.get("respond"):
        raise t.error("respond", "a rule cannot both redirect and respond")
    if not kwargs:
        raise t.error("match", "the rule has no action")
    return Rule(index=index, match=match, **kwargs)


def _duration(t: _Table, key: str) -> float:
    t.used.add(key)
    try:
        return parse_duration(t.data[key])
    except ValueError as exc:
        raise t.error(key, str(exc)) from None


def _names(t: _Table, key: str) -> tuple[str, ...]:
    names = t.strings(key)
    for name in names:
        if not _TOKEN.match(name):
            raise t.error(key, f"{name[:40]!r} is not a header name")
        if name.lower() in PROTECTED_FIELDS:
            raise t.error(key, f"{name!r} is not a field a rule may change")
    return names


def _header_values(t: _Table, key: str) -> tuple[tuple[str, str], ...]:
    table = t.table(key, f"{t.where} {key}")
    assert table is not None
    out = []
    for name, value in table.data.items():
        table.used.add(name)
        if not _TOKEN.match(name):
            raise t.error(key, f"{name[:40]!r} is not a header name")
        if name.lower() in PROTECTED_FIELDS:
            raise t.error(key, f"{name!r} is not a field a rule may change")
        if not isinstance(value, str):
            raise table.error(name, "expected a string")
        if len(value) > MAX_HEADER_VALUE or any(
            (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value
        ):
            raise table.error(name, "must be a short value without control characters")
        out.append((name, value))
    return tuple(out)


def _group(t: _Table, origin_pattern: re.Pattern[str]) -> OriginGroup:
    name = t.text("name", required=True)
    origins = t.strings("origins", required=True)
    if not origins:
        raise t.error("origins", "must list at least one origin URL")
    for origin in origins:
        if not origin_pattern.match(origin):
            raise t.error("origins", f"{origin[:60]!r} is not an origin URL like http://host:port")
    weight = None
    if "weight" in t.data:
        weight = t.integer("weight", 0, minimum=0)
        if weight > 100:
            raise t.error("weight", "is a percentage: at most 100")
    pin = None
    pin_table = t.table("match", f"{t.where} match")
    if pin_table is not None:
        header = pin_table.text("header", "")
        cookie = pin_table.text("cookie", "")
        if bool(header) == bool(cookie):
            raise pin_table.error("header", "give one of header or cookie")
        pin = GroupPin(header.lower(), cookie, pin_table.text("value", required=True))
        pin_table.reject_unknown()
    if (weight is None) == (pin is None):
        raise t.error("weight", "give one of weight (percent of traffic) or match (a pin)")
    t.reject_unknown()
    return OriginGroup(name, tuple(o.rstrip("/") for o in origins), weight, pin)


def _check_groups(t: _Table, groups: tuple[OriginGroup, ...]) -> None:
    seen: set[str] = set()
    for index, group in enumerate(groups):
        if group.name in seen:
            raise t.error("origin_groups", f"#{index + 1}: the name {group.name!r} is used twice")
        seen.add(group.name)
    weighted = [g.weight for g in groups if g.weight is not None]
    if weighted and sum(weighted) != 100:
        raise t.error("origin_groups", f"the weights of the groups sum to {sum(weighted)}, not 100")


def _rate_limit(t: _Table, index: int) -> RateLimit:
    match = _match(t)
    key_text = t.text("key", "client_ip")
    kind, _, name = key_text.partition(":")
    valid = (kind == "client_ip" and not name) or (
        kind in ("header", "cookie") and bool(name) and bool(_TOKEN.match(name))
    )
    if not valid:
        raise t.error("key", 'must be "client_ip", "header:NAME" or "cookie:NAME"')
    t.used.add("rate")
    if "rate" not in t.data:
        raise t.error("rate", "is required")
    try:
        rate = parse_rate(t.data["rate"])
    except ValueError as exc:
        raise t.error("rate", str(exc)) from None
    burst = t.integer("burst", max(1, int(rate)), minimum=1)
    action = t.text("action", "reject")
    if action not in ("reject", "delay"):
        raise t.error("action", 'must be "reject" or "delay"')
    t.reject_unknown()
    return RateLimit(
        index, match, kind, name.lower() if kind == "header" else name, rate, burst, action
    )


def _shadowed(where: str, rules: tuple[Rule, ...]) -> list[str]:
    """Rules every action of which an earlier rule that always applies before it sets."""
    warnings = []
    for position, rule in enumerate(rules):
        for kind in rule.actions:
            earlier = [
                r for r in rules[:position] if kind in r.actions and r.match.covers(rule.match)
            ]
            if not earlier:
                break
        else:
            first = next(r for r in rules[:position] if r.match.covers(rule.match))
            warnings.append(
                f"{where} rules #{rule.index} key 'match': never applies, rule #{first.index} "
                "matches every request it does and sets the same actions first"
            )
    return warnings
