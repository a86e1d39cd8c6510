"""RFC 9111 decisions after the fetch: what a cache does with the answer it got.

`policy.decide` covers the lookup half of a request (fresh hit, stale hit with a
background revalidation, revalidate, fetch); this module covers the other half, as
values the engine matches on exhaustively:

  the upstream answered  → `after_fetch`  → NotModified | UpstreamFailed
                                            | ServeWithoutStoring | StoreAndServe
  the upstream failed    → `after_error`  → ServeStale | Error

and the two request-side questions asked before any lookup: may the fast lane answer
(`may_use_hot_lane`), and may the cache go upstream at all (`only_if_cached`). Pure
functions: `now` is an argument, nothing here awaits or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy, istr

from edge.cache.conditional import etag_matches_strong, etag_matches_weak, parse_etag_list
from edge.cache.directives import effective_directives
from edge.cache.headers import Headers
from edge.cache.keys import vary_fields
from edge.cache.model import ObjectMeta
from edge.cache.policy import (
    may_serve_stale_on_error,
    may_serve_stale_when_unreachable,
    storability,
)
from edge.cache.purge import PurgeVerdict

#: Statuses that mean the upstream failed (RFC 5861 4: "an error is any situation
#: that would result in a 500, 502, 503, or 504 HTTP response status code").
ERROR_STATUSES = frozenset({500, 502, 503, 504})

#: Request fields that send a GET down the full path instead of the fast lane: each
#: needs a decision the fast lane does not make (credentials, ranges, preconditions,
#: loop detection, request cache directives).
#: (`istr`: a case-insensitive lookup of one costs no case folding per request)
HOT_LANE_EXCLUDED = tuple(
    istr(name)
    for name in (
        "Authorization",
        "Range",
        "If-None-Match",
        "If-Modified-Since",
        "If-Match",
        "If-Unmodified-Since",
        "CDN-Loop",
        "Cache-Control",
    )
)


@dataclass(frozen=True, slots=True)
class NotModified:
    """RFC 9111 4.3.4: a 304 to our conditional request: freshen the stored object
    with the new fields and serve it."""


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    """RFC 5861 4: the upstream answered with an error status; a stored copy may
    stand in (see `after_error`), else the error is relayed."""

    status: int


@dataclass(frozen=True, slots=True)
class ServeWithoutStoring:
    """The answer is relayed as it streams and never written.

    `reason` is the Cache-Status detail: not-storable (RFC 9111 3), too-large (over
    the object size limit, like Varnish's uncacheable objects and nginx's
    proxy_max_temp_file_size), close-delimited (its end cannot be told from a cut).
    """

    reason: str


@dataclass(frozen=True, slots=True)
class StoreAndServe:
    """RFC 9111 3: store the answer while every waiting client reads it.

    `vary`: the request fields that select this variant (RFC 9111 4.1), less
    Accept-Encoding, which the cache negotiates itself; empty when the URL has one
    variant, otherwise the object is stored under a secondary key and indexed.
    """

    vary: tuple[str, ...]


Fetched = NotModified | UpstreamFailed | ServeWithoutStoring | StoreAndServe


def after_fetch(
    status: int,
    request_headers: Headers,
    response_headers: Headers,
    *,
    revalidating: bool,
    limit: int,
    close_delimited: bool,
    cache_close_delimited: bool = False,
    negative_ttl: int = 0,
    heuristic_with_credentials: bool = False,
    stored_etag: str | None = None,
) -> Fetched:
    """What to do with an upstream's answer to a fill's GET.

    `revalidating`: the request carried the stored object's validators, so a 304
    refers to it (unless it names another entity-tag: see below). `limit`: the
    largest body this node stores. `close_delimited`: the body is framed by the
    connection's close (RFC 9112 6.3 item 8), here or at a tier above.
    `stored_etag`: the ETag of the stored object being revalidated.
    """
    if status == 304 and revalidating:
        etag = response_headers.get("etag")
        if (
            etag is not None
            and stored_etag is not None
            and not etag_matches_strong(etag, stored_etag)
        ):
            # RFC 9111 4.3.4: a 304 with a strong validator updates only the stored
            # responses with that validator; this one answers an entity-tag the client
            # sent (merged into ours, 4.3.2), so it is the client's, passed on
            return ServeWithoutStoring("not-modified-for-client")
        return NotModified()
    if status == 304:
        # the client's own validators went upstream with ours (4.3.2): its answer
        return ServeWithoutStoring("not-modified-for-client")
    storable = storability(
        "GET",
        status,
        request_headers,
        response_headers,
        negative_ttl=negative_ttl,
        heuristic_with_credentials=heuristic_with_credentials,
    ).storable
    if status in ERROR_STATUSES and (
        revalidating or not storable or not has_explicit_freshness(response_headers)
    ):
        # RFC 5861 4: a stored copy may stand in for the error; without one, an error
        # with explicit freshness is stored like any final status (RFC 9111 3)
        return UpstreamFailed(status)
    if not storable:
        return ServeWithoutStoring("not-storable")
    length = content_length(response_headers)
    if length is not None and length > limit:
        return ServeWithoutStoring("too-large")
    if close_delimited and not cache_close_delimited:
        return ServeWithoutStoring("close-delimited")
    vary = vary_fields(response_headers) or ()
    return StoreAndServe(tuple(f for f in vary if f != "accept-encoding"))


@dataclass(frozen=True, slots=True)
class ServeStale:
    """Serve the stored object in place of the upstream's failure; `reason` is the
    Cache-Status detail (stale-if-error or stale-when-unreachable)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Error:
    """Relay the upstream's error (or answer our own for its failure)."""


AfterError = ServeStale | Error


def after_error(
    stale: ObjectMeta | None,
    now: float,
    *,
    verdict: PurgeVerdict,
    purged_at: float | None,
    unreachable: bool,
    max_stale_when_unreachable: float,
) -> AfterError:
    """Whether a stored copy stands in for an upstream failure at `now`.

    RFC 5861 4 first (stale-if-error, for any failure), then RFC 9111 4.2.4 for an
    origin that could not be reached at all (`unreachable`), up to the service's
    `max_stale_when_unreachable`.
    """
    if stale is None:
        return Error()
    if may_serve_stale_on_error(stale, now, verdict, purged_at):
        return ServeStale("stale-if-error")
    if unreachable and may_serve_stale_when_unreachable(
        stale, now, verdict, max_stale_when_unreachable, purged_at
    ):
        return ServeStale("stale-when-unreachable")
    return Error()


def has_explicit_freshness(response_headers: Headers) -> bool:
    """RFC 9111 4.2.1: the response states its lifetime (s-maxage, max-age, Expires)."""
    directives, source = effective_directives(response_headers)
    return (
        directives.s_maxage is not None
        or directives.max_age is not None
        or (source == "cache-control" and response_headers.get("expires") is not None)
    )


def validation_request_fields(
    stored_etag: str | None, stored_last_modified: str | None, request_headers: Headers
) -> dict[str, str]:
    """The validators of a revalidation: ours, merged with the client's (RFC 9111 4.3.2).

    "When a cache decides to forward a request to revalidate its own stored responses
    for a request that contains an If-None-Match list of entity tags, the cache MAY
    combine the received list with a list of entity tags from its own stored set of
    responses": a 304 then says either that ours is current (it carries our tag) or
    that the client's is (`after_fetch` passes that one on). If-Modified-Since stays
    ours: a date says nothing of which representation matched. Tags the client sent
    that are not entity-tags are dropped, and at most 16 of the client's are taken.
    """
    fields: dict[str, str] = {}
    tags: list[str] = []
    if stored_etag:
        tags.append(stored_etag.strip(" \t"))
    client = ", ".join(request_headers.getall("if-none-match", []))
    if client:
        parsed = parse_etag_list(client) or []
        for tag in parsed[:MAX_CLIENT_TAGS]:
            if tag != "*" and tag not in tags and etag_matches_weak(tag, tag):
                tags.append(tag)
    if tags:
        fields["If-None-Match"] = ", ".join(tags)
    if stored_last_modified:
        fields["If-Modified-Since"] = stored_last_modified
    return fields


#: The most entity-tags of a client's If-None-Match merged into a revalidation.
MAX_CLIENT_TAGS = 16


def content_length(headers: Headers) -> int | None:
    """The Content-Length as a number (None when absent or not plain digits)."""
    text = headers.get("content-length")
    return int(text) if text and text.isdigit() else None


def may_use_hot_lane(request_headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Whether a plain GET may be answered by the fast lane (no field asks for a
    decision it does not make)."""
    # a plain loop, not all() over a generator: this runs on every hit
    for name in HOT_LANE_EXCLUDED:  # noqa: SIM110
        if name in request_headers:
            return False
    return True


def only_if_cached(request_headers: Headers) -> bool:
    """RFC 9111 5.2.1.7: the client wants a stored response or a 504, never a fetch."""
    value = request_headers.get("cache-control")
    return value is not None and "only-if-cached" in value.lower()


def freshness(meta: ObjectMeta, now: float) -> tuple[float, float]:
    """(current age, seconds of freshness left) at `now`: RFC 9111 4.2.3's age, the
    same arithmetic every path uses (`ObjectMeta.age`)."""
    age = meta.age(now)
    return age, meta.freshness_lifetime - age


def invalidated_targets(host: str, target: str, response_headers: Headers) -> set[str]:
    """RFC 9111 4.4: the targets an unsafe request that succeeded invalidates.

    "A cache MUST invalidate the target URI ... and the URI(s) in the Location and
    Content-Location response header fields (if present)" but "MUST NOT invalidate a
    URI from a Location or Content-Location response header field if the host part
    of that URI differs from the host part in the target URI".
    """
    targets = {target}
    for name in ("location", "content-location"):
        value = response_headers.get(name)
        if not value:
            continue
        parts = urlsplit(urljoin(f"http://{host}{target}", value.strip()))
        if parts.scheme in ("http", "https") and (parts.hostname or "") == host:
            targets.add((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    return targets
