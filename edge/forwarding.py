"""What a request looks like when a node sends it on: the forwarding rules.

Hop-by-hop fields go (RFC 9110 7.6.1); fields an origin could act on but the cache key
does not include go (cache-poisoning defence); a shared fill leaves the client's own
validators, Range and coding behind; Via and CDN-Loop (RFC 8586) grow by this node's
entry. Forwarding fields (X-Forwarded-*, Forwarded, X-Real-IP, ...) say who the client
is: a client can write them too, so they are dropped unless the peer is trusted (one of
our nodes, proven by the node token, or an address in `[security] trusted_proxies`)
and this node writes its own (client address, proto, host). Framing is never copied:
the caller says whether a body goes with the request, and only then is its length sent.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence

from multidict import CIMultiDict, CIMultiDictProxy

from edge.cache.policy import HOP_BY_HOP, connection_listed
from edge.front.types import RequestHead

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The header by which an edge proves to a shield that it is one of our nodes: a token
#: derived from the node secret (never the secret itself, which guards the admin
#: listeners). Only ever sent to shields, and never forwarded by anyone.
NODE_TOKEN_HEADER = "X-Edgeshield-Node"

#: Who the client is and how it reached us. Dropped from untrusted peers: an origin
#: that logs, rate-limits, redirects or builds links from them would otherwise act on
#: (and let us cache) what an attacker wrote.
FORWARDING_FIELDS = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-ssl",
        "x-forwarded-protocol",
        "x-url-scheme",
        "front-end-https",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
    }
)

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
    }
)
# Authorization is not among them: a request that carries it never joins another's
# fill, and its own fill is stored only when the answer may be shared (RFC 9111 3.5),
# so the origin must see the credentials it answers for.


#: Fields this module always sets itself (or never sends).
_ALWAYS_REPLACED = frozenset(
    {"host", "content-length", "cdn-loop", "via", NODE_TOKEN_HEADER.lower()}
)


def node_token(secret: str) -> str:
    """The token edges send shields in NODE_TOKEN_HEADER, derived from the node secret."""
    if not secret:
        return ""
    return hmac.new(secret.encode(), b"edgeshield forwarding", hashlib.sha256).hexdigest()


def is_trusted_peer(request: RequestHead, trusted_proxies: Sequence[IPNetwork], token: str) -> bool:
    """Whether the peer may tell us who the client is (keep its forwarding fields).

    One of our nodes proves itself with the node token (compared in constant time);
    a proxy of the operator's (a load balancer in front of the edges) is trusted by
    its address being in `trusted_proxies`. Anyone else is the client itself.
    """
    given = request.headers.get(NODE_TOKEN_HEADER)
    if token and given is not None and hmac.compare_digest(given.encode(), token.encode()):
        return True
    if not trusted_proxies or request.peer is None:
        return False
    try:
        address = ipaddress.ip_address(request.peer)
    except ValueError:
        return False
    return any(address in network for network in trusted_proxies)


def end_to_end_fields(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """The request fields that go upstream at all: hop-by-hop fields and every field
    the client named in Connection removed (RFC 9110 7.6.1).

    Vary's secondary key and storability are computed from these, never from the raw
    request: with `Connection: Cookie` the origin sees no cookie, so its answer is the
    cookie-less variant and must be keyed as such (keying it under the cookie would
    hand an anonymous page to the cookie's owner, or worse the reverse). Keying what
    was forwarded holds for every field, including ones a service's key adds later,
    where a list of fields that may not be nominated would have to be kept in step.
    """
    named = connection_listed(headers.getall("connection", []))
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in named:
            out.add(name, value)
    return out


def upstream_request_headers(
    request: RequestHead,
    host: str,
    *,
    cacheable: bool,
    via: str,
    loop_token: str,
    trusted: bool = False,
    body_length: int | None = None,
    end_to_end: CIMultiDict[str] | None = None,
) -> CIMultiDict[str]:
    """The request as the next tier sees it: hygiene, forwarding and loop fields.

    `cacheable`: the request is for a fill shared by every client that asks, so the
    fields that only make sense for this client (its validators, Range, coding) stay
    behind; `via` and `loop_token` are this node's Via entry and CDN-Loop token;
    `trusted`: the peer's forwarding fields are kept and extended (see
    `is_trusted_peer`), else replaced by ours. `body_length`: the length of the body
    the caller sends with the request, if it sends one of known length; nothing of
    the client's framing is copied, so what we announce is what we send.
    `end_to_end`: `end_to_end_fields` of the request, if the caller has them already.
    """
    incoming = request.headers
    headers: CIMultiDict[str] = CIMultiDict()
    if end_to_end is None:
        end_to_end = end_to_end_fields(incoming)
    for name, value in end_to_end.items():
        lower = name.lower()
        if (
            lower in POISONING_FIELDS
            or lower in _ALWAYS_REPLACED
            or lower in FORWARDING_FIELDS
            or (cacheable and lower in CLIENT_ONLY_FIELDS)
        ):
            continue
        headers.add(name, value)
    # the fields below were all left out above (_ALWAYS_REPLACED, FORWARDING_FIELDS,
    # CLIENT_ONLY_FIELDS when cacheable), so each is added, not searched for and set
    headers.add("Host", host)
    if cacheable:
        # every tier fetches identity and the edges make the codings clients want
        headers.add("Accept-Encoding", "identity")
    if body_length is not None:
        headers.add("Content-Length", str(body_length))
    peer = request.peer or "unknown"
    element = f"for={_forwarded_node(peer)};host={_quoted(host)};proto={request.scheme}"
    if trusted:
        for name, value in incoming.items():
            lower = name.lower()
            if lower in FORWARDING_FIELDS and lower not in ("x-forwarded-for", "forwarded"):
                headers.add(name, value)
        forwarded_for = ", ".join(incoming.getall("x-forwarded-for", []))
        forwarded = ", ".join(incoming.getall("forwarded", []))
        headers.add("X-Forwarded-For", f"{forwarded_for}, {peer}" if forwarded_for else peer)
        headers.add("Forwarded", f"{forwarded}, {element}" if forwarded else element)
        if "x-forwarded-proto" not in headers:
            headers.add("X-Forwarded-Proto", request.scheme)
    else:
        headers.add("X-Forwarded-For", peer)
        headers.add("Forwarded", element)
        headers.add("X-Forwarded-Proto", request.scheme)
    loop_field = ", ".join(incoming.getall("cdn-loop", ()))
    headers.add("CDN-Loop", f"{loop_field}, {loop_token}" if loop_field else loop_token)
    earlier_via = ", ".join(incoming.getall("via", ()))
    headers.add("Via", f"{earlier_via}, {via}" if earlier_via else via)
    return headers


def request_host(request: RequestHead) -> str:
    """The host a request is for, lowercased, without port or trailing dot."""
    raw = request.target
    if raw[:8].lower().startswith(("http://", "https://")):
        # absolute-form (RFC 9112 3.2.2): the target's authority wins over Host
        authority = raw.split("://", 1)[1]
        for end in ("/", "?", "#"):
            authority = authority.split(end, 1)[0]
        host = authority.rpartition("@")[2]
    else:
        host = request.headers.get("host", "")
    host = host.strip().lower()
    if host.endswith("]") or ":" not in host:
        return host.rstrip(".")
    name, _, port = host.rpartition(":")
    return name.rstrip(".") if port.isdigit() else host


def loop_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
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
