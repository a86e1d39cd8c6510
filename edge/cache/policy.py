"""RFC 9111 decisions for a shared cache: what to store, how long it is fresh, what to do.

Everything here is a pure function of its arguments; `now` is always passed in. The
engine asks `classify_request` (may the cache be used at all?), `storability` (may
this response be stored?), `build_meta` (the numbers a hit needs, computed once) and
`decide` (serve, serve stale and revalidate, revalidate, or fetch), then carries the
decision out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from multidict import CIMultiDict

from edge.cache.dates import parse_http_date
from edge.cache.directives import (
    TARGETED_FIELDS,
    CacheControl,
    effective_directives,
    parse_cache_control,
)
from edge.cache.headers import Headers
from edge.cache.keys import surrogate_keys, vary_fields
from edge.cache.model import HeaderPairs, ObjectMeta
from edge.cache.purge import PurgeVerdict

#: RFC 9110 15.1: status codes that are heuristically cacheable.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

#: Statuses whose response this cache knows how to store and replay (RFC 9111 3: "the
#: response status code is final" and understood). 206 is not stored: we fetch whole
#: objects and answer ranges ourselves.
UNDERSTOOD_STATUSES = frozenset(
    {200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501}
)

#: Error statuses stored only when the service configures negative caching.
NEGATIVE_STATUSES = frozenset({404, 405, 410, 414, 501})

#: RFC 9111 4.2.2: a heuristic lifetime is a fraction of the time since Last-Modified;
#: 10% is the RFC's example, and we cap it at a day as Varnish and ATS do.
HEURISTIC_FRACTION = 0.1
HEURISTIC_MAX = 86400.0

#: RFC 9110 7.6.1 hop-by-hop fields, plus the framing we always set ourselves.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Fields set per response by each tier (framing, age, the tier trail, our stale mark).
PER_RESPONSE_FIELDS = frozenset(
    {
        "content-length",
        "content-encoding",
        "age",
        "via",
        "cache-status",
        "x-edgeshield-stale",
        "date",
    }
)

#: Fields only this CDN reads: targeted cache control (RFC 9213 says a CDN consumes
#: CDN-Cache-Control) and surrogate keys. Passed between our tiers, never to clients.
CDN_ONLY_FIELDS = frozenset({*TARGETED_FIELDS, "surrogate-key", "cache-tag"})

#: Fields a client never receives from the cache.
CLIENT_OMITTED = PER_RESPONSE_FIELDS | CDN_ONLY_FIELDS


SAFE_METHODS = frozenset({"GET", "HEAD"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})


class RequestKind(Enum):
    """How the cache may take part in a request."""

    CACHEABLE = "cacheable"  # look up and store
    PASS = "pass"  # straight through, nothing stored or served from the cache
    INVALIDATING = "invalidating"  # unsafe method: pass, then invalidate the URI (RFC 9111 4.4)


def classify_request(method: str, request_headers: Headers) -> RequestKind:
    """Whether a request may be answered from or stored in the cache."""
    if method in UNSAFE_METHODS:
        return RequestKind.INVALIDATING
    if method not in SAFE_METHODS:
        return RequestKind.PASS
    # RFC 9111 3.5: a shared cache must not use a stored response for a request with
    # Authorization unless the response says so; we never look such requests up, and
    # store their responses only when explicitly allowed (see storability).
    if request_headers.get("authorization") is not None:
        return RequestKind.PASS
    return RequestKind.CACHEABLE


@dataclass(frozen=True, slots=True)
class Storability:
    """Whether a response may be stored, and why not when it may not."""

    storable: bool
    reason: str


def storability(
    method: str,
    status: int,
    request_headers: Headers,
    response_headers: Headers,
    *,
    negative_ttl: int = 0,
    heuristic_with_credentials: bool = False,
) -> Storability:
    """RFC 9111 3: may a shared cache store this response?

    `heuristic_with_credentials`: a response to a request that carried Cookie or
    Authorization may be stored on a heuristic lifetime alone (off by default: see
    `credentials_need_explicit_freshness`).
    """
    directives, source = effective_directives(response_headers)
    request_cc_no_store = parse_cache_control(
        ", ".join(request_headers.getall("cache-control", []))
    ).no_store
    if method != "GET":
        return Storability(False, "method")
    if status not in UNDERSTOOD_STATUSES:
        return Storability(False, f"status {status}")
    if request_cc_no_store:
        # RFC 9111 5.2.1.5: request no-store: do not store any part of the request or response
        return Storability(False, "request no-store")
    if directives.no_store:
        return Storability(False, "no-store")
    if directives.private or directives.private_fields:
        # RFC 9111 5.2.2.7: a shared cache must not store a private response. The
        # qualified form (private="Set-Cookie") is treated like the bare one, as RFC
        # 9111 5.2.2.7 notes many caches do, so no listed field can ever leak.
        return Storability(False, "private")
    vary = vary_fields(response_headers)
    if vary is None:
        return Storability(False, "vary *")
    if response_headers.get("set-cookie") is not None and not (
        directives.public or directives.s_maxage is not None
    ):
        # Not an RFC rule but every CDN's: a response setting a cookie is personal
        # unless the origin explicitly says it may be shared.
        return Storability(False, "set-cookie")
    if request_headers.get("authorization") is not None and not (
        directives.public or directives.s_maxage is not None or directives.must_revalidate
    ):
        return Storability(False, "authorization")
    explicit = _has_explicit_lifetime(directives, response_headers, source)
    if status in NEGATIVE_STATUSES and not explicit and negative_ttl <= 0:
        return Storability(False, f"status {status} (negative caching off)")
    if not (explicit or directives.public or status in HEURISTICALLY_CACHEABLE):
        return Storability(False, "no explicit freshness")
    if (
        not explicit
        and not directives.public
        and not heuristic_with_credentials
        and credentials_need_explicit_freshness(request_headers)
        and not (status in NEGATIVE_STATUSES and negative_ttl > 0)
    ):
        return Storability(False, "credentials without explicit freshness")
    return Storability(True, "")


def credentials_need_explicit_freshness(request_headers: Headers) -> bool:
    """Whether the request carried credentials (Cookie or Authorization).

    An answer to such a request may be personal, and one the origin sent without
    any freshness (say `/account.php/x.css`, a page served under a path that looks
    static, with only Last-Modified) is not one it meant to share: storing it on a
    heuristic lifetime is "web cache deception". So such an answer is stored only
    on explicit freshness (s-maxage, max-age, Expires) or an explicit `public`:
    RFC 9111 4.2.2 lets a cache use a heuristic, it never obliges one to.
    """
    return (
        request_headers.get("cookie") is not None
        or request_headers.get("authorization") is not None
    )


def _has_explicit_lifetime(directives: CacheControl, headers: Headers, source: str) -> bool:
    return (
        directives.s_maxage is not None
        or directives.max_age is not None
        or (source == "cache-control" and headers.get("expires") is not None)
    )


def freshness_lifetime(
    status: int,
    directives: CacheControl,
    response_headers: Headers,
    *,
    negative_ttl: int = 0,
    source: str = "cache-control",
    response_time: float | None = None,
) -> float:
    """RFC 9111 4.2.1: the first of s-maxage, max-age, Expires - Date, or a heuristic.

    `source` is the field the directives came from (see `effective_directives`);
    `response_time` stands in for a missing Date ("using the time the message was
    received if it is not present", RFC 9111 4.2.1).
    """
    if directives.s_maxage is not None:
        return float(directives.s_maxage)
    if directives.max_age is not None:
        return float(directives.max_age)
    date = parse_http_date(response_headers.get("date"))
    if date is None:
        date = response_time
    # RFC 9213 2.2: with a targeted field in force, Cache-Control *and* Expires are ignored
    expires_text = response_headers.get("expires") if source == "cache-control" else None
    if expires_text is not None:
        expires = parse_http_date(expires_text)
        # RFC 9111 5.3: an invalid Expires (such as "0") means already expired
        if expires is None or date is None:
            return 0.0
        return max(0.0, expires - date)
    if status in NEGATIVE_STATUSES:
        return float(negative_ttl)
    last_modified = parse_http_date(response_headers.get("last-modified"))
    heuristic_allowed = status in HEURISTICALLY_CACHEABLE or directives.public
    if (
        heuristic_allowed
        and last_modified is not None
        and date is not None
        and date > last_modified
    ):
        return min(HEURISTIC_MAX, (date - last_modified) * HEURISTIC_FRACTION)
    return 0.0


def corrected_initial_age(
    response_headers: Headers, request_time: float, response_time: float
) -> float:
    """RFC 9111 4.2.3: the age the response had when it arrived."""
    age_text = response_headers.get("age")
    age_value = 0.0
    if age_text is not None:
        try:
            age_value = float(max(0, int(age_text.strip())))
        except ValueError:
            age_value = 0.0
    date = parse_http_date(response_headers.get("date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    return max(apparent_age, corrected_age_value)


def client_header_pairs(
    pairs: HeaderPairs, extra_omitted: frozenset[str] = frozenset(), *, for_cdn: bool = False
) -> HeaderPairs:
    """The stored headers a downstream may see: see CLIENT_OMITTED.

    `for_cdn`: the downstream is a tier of this CDN, which needs CDN_ONLY_FIELDS.
    """
    omitted = (PER_RESPONSE_FIELDS if for_cdn else CLIENT_OMITTED) | extra_omitted
    return tuple((name, value) for name, value in pairs if name.lower() not in omitted)


def connection_listed(values: Iterable[str]) -> set[str]:
    """Field names a Connection field lists: hop-by-hop too (RFC 9110 7.6.1)."""
    return {token.strip().lower() for value in values for token in value.split(",")}


def upstream_header_pairs(pairs: HeaderPairs) -> HeaderPairs:
    """Headers received from upstream with hop-by-hop fields removed (RFC 9110 7.6.1)."""
    connection_named = connection_listed(
        value for name, value in pairs if name.lower() == "connection"
    )
    return tuple(
        (name, value)
        for name, value in pairs
        if name.lower() not in HOP_BY_HOP and name.lower() not in connection_named
    )


def pair_headers(pairs: HeaderPairs) -> Headers:
    """View header pairs through the `Headers` protocol."""
    return CIMultiDict(pairs)


def merge_304_headers(stored: HeaderPairs, fresh: HeaderPairs) -> HeaderPairs:
    """RFC 9111 4.3.4: update stored headers with those of a 304 (except framing)."""
    skip = {"content-length", "content-encoding", "transfer-encoding", "content-range"}
    replaced = {name.lower() for name, _ in fresh if name.lower() not in skip}
    kept = tuple((name, value) for name, value in stored if name.lower() not in replaced)
    return kept + tuple((name, value) for name, value in fresh if name.lower() not in skip)


def build_meta(
    *,
    status: int,
    upstream_pairs: HeaderPairs,
    request_time: float,
    response_time: float,
    stored_at: float,
    service: str,
    host: str,
    target: str,
    compressible: bool,
    negative_ttl: int = 0,
    default_stale_if_error: int = 0,
    force_stale: bool = False,
    for_cdn: bool = False,
) -> ObjectMeta:
    """The metadata of a response about to be stored, with its numbers precomputed.

    `for_cdn`: this node's downstream is a tier of this CDN (a shield's edges).
    """
    headers = pair_headers(upstream_pairs)
    directives, source = effective_directives(headers)
    lifetime = freshness_lifetime(
        status,
        directives,
        headers,
        negative_ttl=negative_ttl,
        source=source,
        response_time=response_time,
    )
    initial_age = corrected_initial_age(headers, request_time, response_time)
    if force_stale:
        # The tier above served this stale (soft purge, stale-while-revalidate): it is
        # stale here too, never stored as fresh.
        lifetime = 0.0
    encoding = (headers.get("content-encoding") or "identity").strip().lower() or "identity"
    cache_status = ", ".join(headers.getall("cache-status", []))
    return ObjectMeta(
        status=status,
        upstream_headers=upstream_pairs,
        client_headers=client_header_pairs(upstream_pairs, for_cdn=for_cdn),
        corrected_initial_age=initial_age,
        response_time=response_time,
        stored_at=stored_at,
        freshness_lifetime=lifetime,
        stale_while_revalidate=float(directives.stale_while_revalidate or 0),
        stale_if_error=float(
            directives.stale_if_error
            if directives.stale_if_error is not None
            else default_stale_if_error
        ),
        must_revalidate=(
            directives.must_revalidate
            or directives.proxy_revalidate
            or directives.s_maxage is not None
        ),
        # the qualified form (no-cache="field") is treated like the bare one: simpler
        # than re-validating per field, and never reuses a listed field unvalidated
        no_cache=directives.no_cache or bool(directives.no_cache_fields),
        etag=headers.get("etag"),
        last_modified=parse_http_date(headers.get("last-modified")),
        content_type=headers.get("content-type"),
        upstream_encoding=encoding,
        surrogate_keys=surrogate_keys(headers),
        upstream_cache_status=cache_status,
        upstream_via=", ".join(headers.getall("via", [])),
        compressible=compressible,
        host=host,
        target=target,
        service=service,
    )


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
) -> Decision:
    """RFC 9111 4 and RFC 5861: what to do with what the cache holds for a request.

    `purged_at`: when the soft purge behind a STALE verdict was applied (node-local
    time); the object counts as stale since then at least.
    """
    if meta is None or verdict is PurgeVerdict.GONE:
        return Decision(Action.FETCH, fwd="uri-miss" if meta is None else "miss")
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
