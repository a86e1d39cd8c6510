"""Which header fields pass between a cache's neighbours, and which it keeps to itself.

Hop-by-hop fields (RFC 9110 7.6.1) never cross a hop; per-response fields (framing,
Age, Date, the tier trail) are set by each tier; CDN-only fields (our targeted cache
control and surrogate keys) stay between our tiers. Pure functions over header pairs.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict

from edge.cache.dates import format_http_date
from edge.cache.directives import TARGETED_FIELDS
from edge.cache.headers import Headers
from edge.cache.model import HeaderPairs

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

#: Fields only this CDN reads: Surrogate-Control (Edge Architecture 1.0: a surrogate
#: removes it, as Fastly does) and surrogate keys. Passed between our tiers, never to
#: clients. CDN-Cache-Control is not among them: RFC 9213 2 targets it at every CDN
#: cache on the path, so a CDN in front of ours (a second CDN closer to the client)
#: must see it too; we obey it and pass it on, as Cloudflare does (its own
#: Cloudflare-CDN-Cache-Control is the one it keeps to itself).
CDN_ONLY_FIELDS = frozenset(
    {*(f for f in TARGETED_FIELDS if f != "cdn-cache-control"), "surrogate-key", "cache-tag"}
)

#: Fields a client never receives from the cache.
CLIENT_OMITTED = PER_RESPONSE_FIELDS | CDN_ONLY_FIELDS


def client_header_pairs(
    pairs: HeaderPairs, extra_omitted: frozenset[str] = frozenset(), *, for_cdn: bool = False
) -> HeaderPairs:
    """The stored headers a downstream may see: see CLIENT_OMITTED.

    `for_cdn`: the downstream is a tier of this CDN, which needs CDN_ONLY_FIELDS.
    """
    omitted = PER_RESPONSE_FIELDS if for_cdn else CLIENT_OMITTED
    if extra_omitted:
        omitted = omitted | extra_omitted
    # the stored pairs themselves, not copies: an object's two lists share them
    return tuple([pair for pair in pairs if pair[0].lower() not in omitted])


def connection_listed(values: Iterable[str]) -> set[str]:
    """Field names a Connection field lists: hop-by-hop too (RFC 9110 7.6.1)."""
    return {token.strip().lower() for value in values for token in value.split(",")}


def upstream_header_pairs(pairs: HeaderPairs) -> HeaderPairs:
    """Headers received from upstream with hop-by-hop fields removed (RFC 9110 7.6.1)."""
    # one pass, each name lowered once; the fields Connection names are known only
    # at its end
    kept = []
    named: set[str] | None = None
    for pair in pairs:
        lower = pair[0].lower()
        if lower in HOP_BY_HOP:
            if lower == "connection":
                listed = connection_listed((pair[1],))
                named = listed if named is None else named | listed
            continue
        kept.append((pair, lower))
    if named is None:
        return tuple([pair for pair, _ in kept])
    return tuple([pair for pair, lower in kept if lower not in named])


def pair_headers(pairs: HeaderPairs) -> Headers:
    """View header pairs through the `Headers` protocol."""
    return CIMultiDict(pairs)


def merge_304_headers(stored: HeaderPairs, fresh: HeaderPairs) -> HeaderPairs:
    """RFC 9111 4.3.4: update stored headers with those of a 304 (except framing)."""
    skip = {"content-length", "content-encoding", "transfer-encoding", "content-range"}
    replaced = {name.lower() for name, _ in fresh if name.lower() not in skip}
    kept = tuple((name, value) for name, value in stored if name.lower() not in replaced)
    return kept + tuple((name, value) for name, value in fresh if name.lower() not in skip)


def stored_date(pairs: HeaderPairs, response_time: float) -> str:
    """The Date a stored response is served with: the one it was stored with.

    RFC 9110 6.6.1: Date is when the origin generated the message, so a cache serves
    the stored Date (RFC 9111 4: a stored response is sent as stored, with Age added)
    and replaces it only from a 304 or a new response (`merge_304_headers`). A
    response that came without one gets the time it was received, as a recipient
    with a clock must add it (RFC 9110 6.6.1).
    """
    for name, value in pairs:
        if name.lower() == "date":
            return value
    return format_http_date(response_time)
