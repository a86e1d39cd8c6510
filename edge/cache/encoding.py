"""Accept-Encoding negotiation (RFC 9110 12.5.3) and which types are worth compressing.

The node can produce br and gzip itself; `normalize_accept_encoding` reduces a
request's Accept-Encoding to what of that the client accepts, so equivalent headers
share one cached variant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from edge.cache.headers import is_token, split_list

PRODUCIBLE = ("br", "gzip")
"""Content codings this node can make itself, in order of preference."""

_PREFERENCE = ("br", "gzip", "identity")
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )   (RFC 9110 12.4.2)
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?", re.ASCII)
# RFC 9110 8.4.1.3: "A recipient SHOULD consider "x-gzip" to be equivalent to "gzip"."
_ALIASES = {"x-gzip": "gzip"}


def parse_accept_encoding(value: str | None) -> dict[str, float]:
    """Coding (lowercased) → q-value for each valid member of an Accept-Encoding value.

    A member with an invalid coding or q-value is ignored; parameters other than q
    are ignored; when a coding repeats, its first member counts. An empty value
    (or None) gives an empty mapping.
    """
    prefs: dict[str, float] = {}
    if not value:
        return prefs
    for member in split_list(value):
        coding, *params = (part.strip(" \t") for part in member.split(";"))
        coding = _ALIASES.get(coding.lower(), coding.lower())
        if not is_token(coding):
            continue
        q: float | None = 1.0
        for param in params:
            name, _, argument = param.partition("=")
            if name.strip(" \t").lower() == "q":
                argument = argument.strip(" \t")
                q = float(argument) if _QVALUE.fullmatch(argument) else None
        if q is not None and coding not in prefs:
            prefs[coding] = q
    return prefs


def _rank(coding: str) -> int:
    """Our preference among equally weighted codings: lower is better."""
    try:
        return _PREFERENCE.index(coding)
    except ValueError:
        return len(_PREFERENCE)


def _weight(coding: str, prefs: dict[str, float]) -> float | None:
    """The client's q for `coding` (0 excluded); None if the client does not accept it.

    Identity not named and not covered by "*" is acceptable with the lowest weight:
    RFC 9110 12.5.3, "If the representation has no content coding, then it is
    acceptable by default unless specifically excluded by the Accept-Encoding header
    field stating either "identity;q=0" or "*;q=0" without a more specific entry for
    "identity"."
    """
    if coding in prefs:
        q = prefs[coding]
    elif "*" in prefs:
        q = prefs["*"]
    elif coding == "identity":
        return 0.0
    else:
        return None
    return q if q > 0 else None


def choose_encoding(accept_encoding: str | None, available: Iterable[str]) -> str | None:
    """The best of `available` codings for this request, or None if none is acceptable.

    Highest q wins; ties go to br, then gzip, then identity, then the rest in the
    order given. With no Accept-Encoding at all we send identity when we have it
    (any coding would be allowed, but an unknowing client is safest with none),
    otherwise the first available. The chosen name is returned as given.
    """
    candidates = list(available)
    if accept_encoding is None:
        for coding in candidates:
            if coding.lower() == "identity":
                return coding
        return candidates[0] if candidates else None
    prefs = parse_accept_encoding(accept_encoding)
    best: tuple[float, int, int] | None = None
    chosen: str | None = None
    for position, coding in enumerate(candidates):
        name = _ALIASES.get(coding.lower(), coding.lower())
        weight = _weight(name, prefs)
        if weight is None:
            continue
        key = (-weight, _rank(name), position)
        if best is None or key < best:
            best, chosen = key, coding
    return chosen


def normalize_accept_encoding(value: str | None) -> str:
    """The codings this node can produce that the client accepts, canonical: "br,gzip".

    "" means identity only (also for a request with no Accept-Encoding, which gets
    identity from `choose_encoding`). Used in secondary cache keys.
    """
    if value is None:
        return ""
    prefs = parse_accept_encoding(value)
    return ",".join(coding for coding in PRODUCIBLE if _weight(coding, prefs) is not None)


_COMPRESSIBLE_TYPES = frozenset(
    {
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/json",
        "application/xml",
        "application/xhtml+xml",
        "application/wasm",
        "application/x-sh",
        "application/x-tex",
        "application/graphql",
        "application/vnd.ms-fontobject",
        "application/x-font-ttf",
        "application/x-font-otf",
        "application/x-font-truetype",
        "application/x-font-opentype",
        "font/ttf",
        "font/otf",
        "font/collection",
        "image/svg+xml",
        "image/x-icon",
        "image/vnd.microsoft.icon",
        "image/bmp",
    }
)
# Already compressed or streamed: compressing again wastes CPU (woff/woff2 carry
# their own compression; an event stream must not be buffered).
_NEVER = frozenset({"text/event-stream"})


def is_compressible(content_type: str | None) -> bool:
    """Whether a body of this Content-Type gains from br/gzip (text, JSON, JS, XML, ...).

    Images (except SVG, ICO, BMP), audio, video, archives and woff fonts do not.
    """
    if not content_type:
        return False
    media_type = content_type.partition(";")[0].strip(" \t").lower()
    if media_type in _NEVER:
        return False
    if media_type.startswith("text/") or media_type in _COMPRESSIBLE_TYPES:
        return True
    return media_type.endswith(("+json", "+xml"))


#: The content codings this node can decode (RFC 9110 8.4.1; "x-gzip" is gzip).
DECODABLE = frozenset({"identity", "gzip", "x-gzip", "deflate", "br"})

#: The default least size worth compressing, like nginx's gzip_min_length (whose own
#: default, 20 bytes, is below any gain): under about a TCP segment's worth of text,
#: br or gzip save a few bytes at most and cost a second stored copy, a Vary on
#: Accept-Encoding and the client's decoding (Akamai and Google's guidance say 860,
#: Cloudflare compresses from about 50 bytes; 256 sits between).
COMPRESS_MIN_SIZE = 256


def is_decodable(content_encoding: str | None) -> bool:
    """Whether a stored body in this coding can be decoded here for a client that does
    not accept it: one coding we know. An unknown coding, or a list of several
    ("gzip, br"), is stored and passed as is, never decoded or coded again."""
    return (content_encoding or "identity").strip(" \t").lower() in DECODABLE


def compression_eligible(
    content_type: str | None, content_encoding: str, length: int | None, min_size: int
) -> bool:
    """Whether the node will store br/gzip variants of a response (so its answers
    depend on Accept-Encoding): a compressible type in identity, of at least
    `min_size` bytes when its length is known (like nginx's gzip_min_length, which
    also goes by Content-Length only). A body the origin coded in a coding we know is
    decoded to identity for clients that cannot take it, so it depends too."""
    coding = content_encoding.strip(" \t").lower()
    if coding != "identity":
        return coding in DECODABLE
    if not is_compressible(content_type):
        return False
    return length is None or length >= min_size


def varies_on_coding(codings: Iterable[str], upstream_encoding: str) -> bool:
    """Whether the answer from stored bodies in `codings` depends on the request's
    Accept-Encoding (RFC 9110 12.5.5: Vary lists what "might influence" the
    selection): more than one coding stored, or one we would decode for a client
    that does not accept it. A lone identity body, or one coding we cannot decode,
    is the same answer for everyone."""
    stored = set(codings)
    if len(stored) > 1:
        return True
    coding = upstream_encoding.strip(" \t").lower()
    return coding != "identity" and coding in DECODABLE
