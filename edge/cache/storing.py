"""RFC 9111 3 and 4.2: may a response be stored, and how long is it fresh.

`storability` answers the first (with the reason when not), `freshness_lifetime` and
`corrected_initial_age` the numbers of the second, and `build_meta` computes once, at
store time, every number a hit needs. Pure functions of their arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.cache.dates import parse_http_date
from edge.cache.directives import CacheControl, effective_directives, parse_cache_control
from edge.cache.fields import client_header_pairs, pair_headers
from edge.cache.headers import Headers
from edge.cache.keys import surrogate_keys, vary_fields
from edge.cache.model import HeaderPairs, ObjectMeta

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
