"""Traffic rules' plans and what carrying them out means: the request-phase plan
(respond, redirect, bypass, cache key, request fields, origin group, rate limits) and
the response-phase plan (TTL, stale windows, response fields), and the pure edits
they make to a request's or an answer's fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from edge.cache.directives import TARGETED_FIELDS
from edge.cache.headers import Headers
from edge.cache.rule_match import cookie_value
from fleet.rules import CacheKeyRule, RateLimit, Redirect, Respond

HeaderPairs = tuple[tuple[str, str], ...]

#: response fields a TTL override replaces: the ones that say how long this CDN keeps
#: an answer (RFC 9213 2.2: CDN-Cache-Control is read first and, when present, the
#: others are ignored by this cache while clients still see Cache-Control)
CDN_FRESHNESS_FIELDS = frozenset(TARGETED_FIELDS)


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
