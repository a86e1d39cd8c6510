"""What a request looks like when a node sends it on: the forwarding rules.

Hop-by-hop fields go (RFC 9110 7.6.1); fields an origin could act on but the cache key
does not include go (cache-poisoning defence); a shared fill leaves the client's own
validators, Range and coding behind; X-Forwarded-For, Forwarded (RFC 7239), Via and
CDN-Loop (RFC 8586) grow by this node's entry.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from edge.cache.policy import HOP_BY_HOP, connection_listed

#: Request fields an origin could act on that the cache key does not include: a
#: poisoned response stored under a clean key would be served to everyone.
POISONING_FIELDS = frozenset(
    {
        "x-forwarded-host",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-host",
        "x-forwarded-server",
        "x-forwarded-scheme",
    }
)
#: Client fields not sent upstream on a cacheable fill: the fill is for everyone.
CLIENT_ONLY_FIELDS = frozenset(
    {
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "if-range",
        "range",
        "accept-encoding",
        "cache-control",
        "pragma",
        "authorization",
    }
)


def upstream_request_headers(
    request: web.BaseRequest, host: str, *, cacheable: bool, via: str, loop_token: str
) -> CIMultiDict[str]:
    """The request as the next tier sees it: hygiene, forwarding and loop fields.

    `cacheable`: the request is for a fill shared by every client that asks, so the
    fields that only make sense for this client (its validators, Range, coding) stay
    behind; `via` and `loop_token` are this node's Via entry and CDN-Loop token.
    """
    incoming = request.headers
    connection_named = connection_listed(incoming.getall("connection", []))
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in connection_named
            or lower in POISONING_FIELDS
            or lower
            in ("host", "content-length", "x-forwarded-for", "forwarded", "cdn-loop", "via")
            or (cacheable and lower in CLIENT_ONLY_FIELDS)
        ):
            continue
        headers.add(name, value)
    headers["Host"] = host
    if cacheable:
        # every tier fetches identity and the edges make the codings clients want
        headers["Accept-Encoding"] = "identity"
    if request.body_exists and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    peer = request.remote or "unknown"
    forwarded_for = ", ".join(incoming.getall("x-forwarded-for", []))
    headers["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
    forwarded = ", ".join(incoming.getall("forwarded", []))
    element = f"for={_forwarded_node(peer)};host={_quoted(host)};proto={request.scheme}"
    headers["Forwarded"] = f"{forwarded}, {element}" if forwarded else element
    loop_field = ", ".join(incoming.getall("cdn-loop", []))
    headers["CDN-Loop"] = f"{loop_field}, {loop_token}" if loop_field else loop_token
    earlier_via = ", ".join(incoming.getall("via", []))
    headers["Via"] = f"{earlier_via}, {via}" if earlier_via else via
    return headers


def request_host(request: web.BaseRequest) -> str:
    """The host a request is for, lowercased, without port or trailing dot."""
    raw = request.raw_path
    if raw.startswith(("http://", "https://")):
        # absolute-form (RFC 9112 3.2.2): the target's authority wins over Host
        authority = raw.split("://", 1)[1].split("/", 1)[0]
        host = authority
    else:
        host = request.headers.get("host", "")
    host = host.strip().lower()
    if host.endswith("]") or ":" not in host:
        return host.rstrip(".")
    name, _, port = host.rpartition(":")
    return name.rstrip(".") if port.isdigit() else host


def loop_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    """The CDN identifiers in CDN-Loop (RFC 8586), parameters dropped."""
    return {
        member.split(";", 1)[0].strip()
        for value in headers.getall("cdn-loop", [])
        for member in value.split(",")
    }


def _forwarded_node(address: str) -> str:
    return f'"[{address}]"' if ":" in address else address


def _quoted(value: str) -> str:
    return f'"{value}"' if ":" in value else value
