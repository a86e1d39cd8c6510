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

#: Statuses whose semantics this cache knows and replays faithfully (RFC 9111 5.2.2.3:
#: what `must-understand` asks about). 206 is not stored: we fetch whole objects and
#: answer ranges ourselves.
UNDERSTOOD_STATUSES = frozenset(
    {200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501}
)

#: Final statuses never stored whatever they say: a partial (206, see above), a 304
#: (it refers to a stored response, it is not one) and 101 (not final for HTTP).
NEVER_STORED = frozenset({206, 304})

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
    # RFC 9111 3: "the response status code is final" (200-599 here); any final status
    # is storable with explicit freshness, not only the heuristically cacheable ones
    if not 200 <= status <= 599 or status in NEVER_STORED:
        return Storability(False, f"status {status}")
    if directives.must_understand:
        # RFC 9111 5.2.2.3: with must-understand, store only a status we understand,
        # and then no-store (sent beside it for caches that do not know the directive)
        # is overridden
        if status not in UNDERSTOOD_STATUSES:
            return Storability(False, f"status {status} (must-understand)")
    elif directives.no_store:
        return Storability(False, "no-store")
    if request_cc_no_store:
        # RFC 9111 5.2.1.5: request no-store: do not store any part of the request or response
        return Storability(False, "request no-store")
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
    if request_headers.get("authorization") is not None and not authorized_reuse_allowed(
        directives
    ):
        return Storability(False, "authorization")
    explicit = _has_explicit_lifetime(directives, response_headers, source)
    heuristic = status in HEURISTICALLY_CACHEABLE or directives.public
    has_last_modified = response_headers.get("last-modified") is not None
    if status in NEGATIVE_STATUSES and not explicit and negative_ttl <= 0 and not has_last_modified:
        # RFC 9110 15.1: a 404 (etc.) is heuristically cacheable, but with nothing to
        # base a heuristic on (no Last-Modified) only the service's negative_ttl
        # gives it a lifetime
        return Storability(False, f"status {status} (negative caching off)")
    if not (explicit or heuristic):
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


def authorized_reuse_allowed(directives: CacheControl) -> bool:
    """RFC 9111 3.5: may a shared cache store, and reuse for other requests, a
    response to a request with Authorization? Only when it says `public`,
    `s-maxage` or `must-revalidate`."""
    return directives.public or directives.s_maxage is not None or directives.must_revalidate


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
    last_modified = parse_http_date(response_headers.get("last-modified"))
    heuristic_allowed = status in HEURISTICALLY_CACHEABLE or directives.public
    if (
        heuristic_allowed
        and last_modified is not None
        and date is not None
        and date > last_modified
    ):
        # RFC 9111 4.2.2 on RFC 9110 15.1's heuristically cacheable codes (404 too)
        return min(HEURISTIC_MAX, (date - last_modified) * HEURISTIC_FRACTION)
    if status in NEGATIVE_STATUSES:
        return float(negative_ttl)
    return 0.0


#: RFC 9111 1.2.2: delta-seconds past this are sent (and taken) as this
MAX_AGE_VALUE = 2147483648


def age_value(response_headers: Headers) -> int | None:
    """RFC 9111 5.1: the Age of a response in seconds, 0 when absent, None when invalid.

    "a cache encountering a message with a list-based Age field value SHOULD use the
    first member of the field value, discarding subsequent ones" (so `Age: 7200, 0`
    is 7200, and of two Age lines the first counts); a first member that is not a
    non-negative integer is invalid.
    """
    lines = response_headers.getall("age", [])
    if not lines:
        return 0
    first = lines[0].split(",", 1)[0].strip(" \t")
    if not first.isascii() or not first.isdigit():
        return None
    return min(int(first), MAX_AGE_VALUE)


def corrected_initial_age(
    response_headers: Headers, request_time: float, response_time: float
) -> float:
    """RFC 9111 4.2.3: the age the response had when it arrived (an invalid Age
    counts as 0 here; `build_meta` makes such a response stale, see `age_value`)."""
    age_value_ = float(age_value(response_headers) or 0)
    date = parse_http_date(response_headers.get("date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value_ + response_delay
    return max(apparent_age, corrected_age_value)


def build_meta(
    *,
    status: int,
    upstream_pairs: HeaderPairs,
    upstream_fields: Headers | None = None,
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
    `upstream_fields`: `upstream_pairs` as a map, when the caller has made one (the
    fill has, for its own decisions: one map per answer, not one each).
    """
    headers = pair_headers(upstream_pairs) if upstream_fields is None else upstream_fields
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
    if age_value(headers) is None:
        # RFC 9111 5.1: an Age we cannot read tells nothing of how old the response is;
        # rather than take it as new (fresh for its whole lifetime), it is not fresh
        # from it: stored, and validated before its first reuse
        lifetime = 0.0
    if force_stale:
        # The tier above served this stale (soft purge, stale-while-revalidate): it is
        # stale here too, never stored as fresh.
        lifetime = 0.0
    encoding = (headers.get("content-encoding") or "identity").strip().lower() or "identity"
    cache_status = ", ".join(headers.getall("cache-status", []))
    return ObjectMeta(
        status=status,
        upstream_headers=upstream_pairs,
        client_headers=client_header_pairs(
            upstream_pairs, frozenset(directives.no_cache_fields), for_cdn=for_cdn
        ),
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
        # RFC 9111 5.2.2.4: the bare form validates before every reuse; the qualified
        # form (no-cache="field") lets the rest be reused, without the listed fields
        no_cache=directives.no_cache,
        no_cache_fields=directives.no_cache_fields,
        authorized_reuse=authorized_reuse_allowed(directives),
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
