"""RFC 9111 decisions for a shared cache: may it take part, and what to do with a lookup.

Everything here is a pure function of its arguments; `now` is always passed in. The
engine asks `classify_request` (may the cache be used at all?), `storability` (may
this response be stored? in `edge.cache.storing`), `build_meta` (the numbers a hit
needs, computed once; `edge.cache.storing`) and `decide` (serve, serve stale and
revalidate, revalidate, or fetch), then carries the decision out. Which fields cross
a hop is `edge.cache.fields`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from edge.cache.directives import CacheControl
from edge.cache.fields import (
    CDN_ONLY_FIELDS,
    CLIENT_OMITTED,
    HOP_BY_HOP,
    PER_RESPONSE_FIELDS,
    client_header_pairs,
    connection_listed,
    merge_304_headers,
    pair_headers,
    upstream_header_pairs,
)
from edge.cache.headers import Headers
from edge.cache.model import ObjectMeta
from edge.cache.purge import PurgeVerdict
from edge.cache.storing import (
    HEURISTIC_FRACTION,
    HEURISTIC_MAX,
    HEURISTICALLY_CACHEABLE,
    NEGATIVE_STATUSES,
    UNDERSTOOD_STATUSES,
    Storability,
    build_meta,
    corrected_initial_age,
    credentials_need_explicit_freshness,
    freshness_lifetime,
    storability,
)

# the header-field and storing halves live in edge.cache.fields and edge.cache.storing;
# their names stay importable from here
__all__ = [
    "CACHEABLE_METHODS",
    "CDN_ONLY_FIELDS",
    "CLIENT_OMITTED",
    "HEURISTICALLY_CACHEABLE",
    "HEURISTIC_FRACTION",
    "HEURISTIC_MAX",
    "HOP_BY_HOP",
    "NEGATIVE_STATUSES",
    "PER_RESPONSE_FIELDS",
    "SAFE_METHODS",
    "UNDERSTOOD_STATUSES",
    "UNSAFE_METHODS",
    "Action",
    "Decision",
    "RequestKind",
    "Storability",
    "apply_request_directives",
    "build_meta",
    "classify_request",
    "client_header_pairs",
    "connection_listed",
    "corrected_initial_age",
    "credentials_need_explicit_freshness",
    "decide",
    "freshness_lifetime",
    "may_serve_stale_on_error",
    "may_serve_stale_when_unreachable",
    "merge_304_headers",
    "pair_headers",
    "staleness",
    "storability",
    "upstream_header_pairs",
]

#: Methods whose answers a cache may store and reuse.
CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
#: RFC 9110 9.2.1: the methods defined as safe. Every other method, whatever its name
#: (POST, PUT, DELETE, PATCH, but also M-SEARCH or a method not yet registered), is
#: "not known to be safe" and invalidates what it touches (RFC 9111 4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})


class RequestKind(Enum):
    """How the cache may take part in a request."""

    CACHEABLE = "cacheable"  # look up and store
    PASS = "pass"  # straight through, nothing stored or served from the cache
    INVALIDATING = "invalidating"  # unsafe method: pass, then invalidate the URI (RFC 9111 4.4)


def classify_request(method: str, request_headers: Headers) -> RequestKind:
    """Whether a request may be answered from or stored in the cache.

    A request with Authorization is cacheable too: RFC 9111 3.5 lets a shared cache
    store and reuse the answer when the response says public, s-maxage or
    must-revalidate (`storability`, and `decide` with `authorization`).
    """
    if method in CACHEABLE_METHODS:
        return RequestKind.CACHEABLE
    if method in SAFE_METHODS:
        return RequestKind.PASS
    # RFC 9111 4.4: "A cache MUST invalidate the target URI ... when it receives a
    # non-error status code in response to an unsafe request method (including
    # methods whose safety is unknown)"
    return RequestKind.INVALIDATING


class Action(Enum):
    """What the engine does with a lookup."""

    SERVE = "serve"  # fresh: answer from the cache
    SERVE_STALE_REVALIDATE = "swr"  # answer stale now, revalidate once in the background
    REVALIDATE = "revalidate"  # conditional request upstream, then answer
    FETCH = "fetch"  # nothing usable stored: fetch (collapsed)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a lookup: what to do, and the facts that led there."""

    action: Action
    age: float = 0.0
    #: seconds of freshness left (negative when stale)
    ttl: float = 0.0
    #: the stored response may stand in for an upstream error until this much staleness
    stale_if_error: bool = False
    #: why the lookup went upstream, in Cache-Status words (RFC 9211 2.2)
    fwd: str = ""


def decide(
    meta: ObjectMeta | None,
    now: float,
    verdict: PurgeVerdict = PurgeVerdict.NONE,
    purged_at: float | None = None,
    *,
    authorization: bool = False,
) -> Decision:
    """RFC 9111 4 and RFC 5861: what to do with what the cache holds for a request.

    `purged_at`: when the soft purge behind a STALE verdict was applied (node-local
    time); the object counts as stale since then at least. `authorization`: the
    request carries Authorization, so only a response stored as reusable for it
    (RFC 9111 3.5) may answer it.
    """
    if meta is None or verdict is PurgeVerdict.GONE:
        return Decision(Action.FETCH, fwd="uri-miss" if meta is None else "miss")
    if authorization and not meta.authorized_reuse:
        # RFC 9111 3.5: "A shared cache MUST NOT use a cached response to a request
        # with an Authorization header field ... unless" public / s-maxage /
        # must-revalidate; so this request goes upstream with its credentials
        return Decision(Action.FETCH, fwd="request")
    age = meta.age(now)
    ttl = meta.freshness_lifetime - age
    if verdict is PurgeVerdict.STALE:
        ttl = -staleness(meta, now, verdict, purged_at)
    if ttl > 0 and not meta.no_cache:
        return Decision(Action.SERVE, age=age, ttl=ttl)
    stale_for = -ttl
    stale_if_error = _stale_may_stand_in(meta, stale_for)
    if (
        _may_serve_stale(meta)
        and meta.stale_while_revalidate > 0
        and stale_for <= meta.stale_while_revalidate
    ):
        # RFC 5861 3: "caches MAY serve the response in which it appears after it
        # becomes stale, up to the indicated number of seconds", revalidating meanwhile.
        # A soft purge makes it stale from the purge on, so the window ends that many
        # seconds after the purge.
        return Decision(
            Action.SERVE_STALE_REVALIDATE, age=age, ttl=ttl, stale_if_error=stale_if_error
        )
    return Decision(Action.REVALIDATE, age=age, ttl=ttl, stale_if_error=stale_if_error, fwd="stale")


def staleness(
    meta: ObjectMeta, now: float, verdict: PurgeVerdict, purged_at: float | None = None
) -> float:
    """How long the object has been stale (negative while fresh, RFC 9111 4.2).

    A soft-purged object (verdict STALE) is stale now whatever its age, and has been
    since the purge (`purged_at`, when known).
    """
    stale_for = meta.age(now) - meta.freshness_lifetime
    if verdict is PurgeVerdict.STALE:
        since_purge = now - purged_at if purged_at is not None else 0.0
        stale_for = max(stale_for, since_purge, 0.0)
    return stale_for


def may_serve_stale_on_error(
    meta: ObjectMeta, now: float, verdict: PurgeVerdict, purged_at: float | None = None
) -> bool:
    """RFC 5861 4: may this stored response stand in for an upstream error now?"""
    if verdict is PurgeVerdict.GONE:
        return False
    return _stale_may_stand_in(meta, staleness(meta, now, verdict, purged_at))


def may_serve_stale_when_unreachable(
    meta: ObjectMeta,
    now: float,
    verdict: PurgeVerdict,
    max_stale: float,
    purged_at: float | None = None,
) -> bool:
    """RFC 9111 4.2.4: may this stored response be served while the origin cannot be
    reached (connection refused, timeout, no route), up to `max_stale` seconds stale?

    "A cache MUST NOT generate a stale response if it is prohibited by an explicit
    in-protocol directive (e.g., by a no-cache response directive, a must-revalidate
    response directive, or an applicable s-maxage or proxy-revalidate response
    directive)", and it may send one when "it is disconnected". A hard purge is never
    undone; a 5xx *answer* from the origin is not a disconnection (stale-if-error).
    """
    if verdict is PurgeVerdict.GONE or max_stale <= 0 or not _may_serve_stale(meta):
        return False
    return staleness(meta, now, verdict, purged_at) <= max_stale


def _may_serve_stale(meta: ObjectMeta) -> bool:
    # RFC 9111 4.2.4: a cache must not serve stale when must-revalidate etc. forbid it.
    return not meta.must_revalidate and not meta.no_cache


def _stale_may_stand_in(meta: ObjectMeta, staleness: float) -> bool:
    """RFC 5861 4: within the stale-if-error window (and nothing forbids stale)."""
    return _may_serve_stale(meta) and meta.stale_if_error > 0 and staleness <= meta.stale_if_error


def apply_request_directives(
    decision: Decision, meta: ObjectMeta | None, request: CacheControl
) -> Decision:
    """RFC 9111 5.2.1: a lookup's decision as the request's own directives change it.

    Only for services that honour them (`honor_request_cache_control`; off by
    default, as Fastly, CloudFront and nginx ignore a reloading browser's no-cache to
    protect the origin). `no-cache` (5.2.1.4) and `max-age` (5.2.1.1) send a stored
    response to validation when it is older than allowed; `min-fresh` (5.2.1.3)
    when it is fresh for less than asked; `max-stale` (5.2.1.2) lets a stale one
    be served, up to that much staleness, unless the response forbids stale
    answers (must-revalidate, no-cache: RFC 9111 4.2.4). `no-store` and
    `only-if-cached` are honoured always (`storability`, `transitions.only_if_cached`).
    """
    if meta is None or decision.action is Action.FETCH:
        return decision
    age, ttl = decision.age, decision.ttl
    too_old = (
        request.no_cache
        or (request.max_age is not None and age > request.max_age)
        or (request.min_fresh is not None and ttl < request.min_fresh)
    )
    if too_old:
        return Decision(
            Action.REVALIDATE,
            age=age,
            ttl=ttl,
            stale_if_error=decision.stale_if_error,
            fwd="request",
        )
    if (
        decision.action is not Action.SERVE
        and request.max_stale is not None
        and _may_serve_stale(meta)
        and -ttl <= request.max_stale
    ):
        return Decision(Action.SERVE, age=age, ttl=ttl, stale_if_error=decision.stale_if_error)
    return decision
