"""Cache-Control directives (RFC 9111 5.2) and which field this CDN obeys (RFC 9213).

`parse_cache_control` never fails: unknown directives are ignored, a malformed
value follows RFC 9111's rules for it, and a directive that appears more than once
keeps its most restrictive value. `effective_directives` picks CDN-Cache-Control,
then Surrogate-Control, then Cache-Control.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from edge.cache.headers import Headers, split_list, unquote
from edge.cache.structured import Member, parse_dictionary

MAX_DELTA_SECONDS = 2**31
"""RFC 9111 1.2.2: a delta-seconds too large to hold is passed on as 2147483648."""

OWN_TARGETED_FIELD = "edgeshield-cdn-cache-control"
"""This CDN's own targeted field (RFC 9213 2: a CDN may define one, as Cloudflare has
Cloudflare-CDN-Cache-Control): read before all others and never shown to a client;
the traffic rules' TTL overrides are written in it."""

TARGETED_FIELDS = (OWN_TARGETED_FIELD, "cdn-cache-control", "surrogate-control")
"""Fields addressed to CDNs that this CDN obeys, in target list order (RFC 9213 2,
Edge Architecture 1.0)."""

_DELTA_SECONDS = re.compile(r"[0-9]+", re.ASCII)


@dataclass(frozen=True)
class CacheControl:
    """Parsed cache directives of one field (request or response).

    Numbers are delta-seconds (None: absent). `no_cache` and `private` are the
    unqualified forms; a qualified form (`no-cache="Set-Cookie"`) lists its
    lowercased field names in `no_cache_fields` / `private_fields` instead (RFC 9111
    5.2.2.4, 5.2.2.7). At most one of each pair is set: when both forms appear the
    bare one wins. A bare request `max-stale` is `MAX_DELTA_SECONDS`.
    """

    max_age: int | None = None
    s_maxage: int | None = None
    no_store: bool = False
    no_cache: bool = False
    no_cache_fields: tuple[str, ...] = ()
    private: bool = False
    private_fields: tuple[str, ...] = ()
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    immutable: bool = False
    no_transform: bool = False
    only_if_cached: bool = False
    min_fresh: int | None = None
    max_stale: int | None = None
    #: RFC 9111 5.2.2.3: store only if the cache understands the status code
    must_understand: bool = False


EMPTY = CacheControl()

_FLAGS = {
    "no-store": "no_store",
    "public": "public",
    "must-revalidate": "must_revalidate",
    "proxy-revalidate": "proxy_revalidate",
    "immutable": "immutable",
    "no-transform": "no_transform",
    "only-if-cached": "only_if_cached",
    "must-understand": "must_understand",
}
# Duplicates keep the most restrictive value (RFC 9111 4.2.1): the shortest
# lifetime or staleness allowance, the longest required remaining freshness.
_SMALLEST_WINS = {
    "max-age": "max_age",
    "s-maxage": "s_maxage",
    "stale-while-revalidate": "stale_while_revalidate",
    "stale-if-error": "stale_if_error",
    "max-stale": "max_stale",
}
_LARGEST_WINS = {"min-fresh": "min_fresh"}
# Surrogate-Control (Edge Architecture 1.0) as the CDNs that honour it do.
_SURROGATE_DIRECTIVES = frozenset(
    {"max-age", "no-store", "stale-while-revalidate", "stale-if-error"}
)


@dataclass
class _Builder:
    """Mutable accumulator for one parse; frozen into `CacheControl` at the end."""

    values: dict[str, object] = field(default_factory=dict)
    no_cache_fields: list[str] = field(default_factory=list)
    private_fields: list[str] = field(default_factory=list)
    seen: bool = False

    def flag(self, attr: str) -> None:
        self.values[attr] = True
        self.seen = True

    def number(self, name: str, seconds: int) -> None:
        self.seen = True
        seconds = min(seconds, MAX_DELTA_SECONDS)
        if name in _SMALLEST_WINS:
            attr = _SMALLEST_WINS[name]
            old = self.values.get(attr)
            self.values[attr] = seconds if not isinstance(old, int) else min(old, seconds)
        else:
            attr = _LARGEST_WINS[name]
            old = self.values.get(attr)
            self.values[attr] = seconds if not isinstance(old, int) else max(old, seconds)

    def fields(self, name: str, names: list[str]) -> None:
        self.seen = True
        target = self.no_cache_fields if name == "no-cache" else self.private_fields
        for field_name in names:
            lowered = field_name.strip(" \t").lower()
            if lowered and lowered not in target:
                target.append(lowered)

    def build(self) -> CacheControl:
        # The bare form restricts more than any field list, so when both appear the
        # bare form wins (RFC 9111 4.2.1's "most restrictive") and the list is dropped.
        return CacheControl(
            no_cache_fields=() if self.values.get("no_cache") else tuple(self.no_cache_fields),
            private_fields=() if self.values.get("private") else tuple(self.private_fields),
            **self.values,  # type: ignore[arg-type]
        )


def _delta_seconds(text: str) -> int | None:
    """An RFC 9111 1.2.2 delta-seconds value (clamped), or None if `text` is not one."""
    if not _DELTA_SECONDS.fullmatch(text):
        return None
    digits = text.lstrip("0")
    if len(digits) > 10:  # beyond 2^31 for sure; int() of huge strings is refused
        return MAX_DELTA_SECONDS
    return min(int(digits or "0"), MAX_DELTA_SECONDS)


def _apply(builder: _Builder, name: str, argument: str | None) -> None:
    """Record one `token [ "=" ( token / quoted-string ) ]` directive."""
    if name in _FLAGS:
        builder.flag(_FLAGS[name])
    elif name in ("no-cache", "private"):
        names = [] if argument is None else split_list(argument)
        if names:
            builder.fields(name, names)
        else:
            # An empty field list limits nothing less than the bare directive does.
            builder.flag(name.replace("-", "_"))
    elif name in _SMALLEST_WINS or name in _LARGEST_WINS:
        seconds = None if argument is None else _delta_seconds(argument)
        if seconds is not None:
            builder.number(name, seconds)
        elif name == "max-stale" and argument is None:
            # RFC 9111 5.2.1.2: no value means "any age of staleness".
            builder.number(name, MAX_DELTA_SECONDS)
        elif name in ("max-age", "s-maxage"):
            # RFC 9111 4.2.1: "If a cache receives a delta-seconds value larger than
            # the largest integer it can represent, or if any of its subsequent
            # calculations overflows ... invalid ... caches are encouraged to
            # consider responses that have invalid freshness information to be stale."
            builder.number(name, 0)
        # other directives with an invalid value are ignored


def _directives(value: str) -> list[tuple[str, str | None]]:
    """The (lowercased name, unquoted argument or None) pairs of a directive list."""
    pairs: list[tuple[str, str | None]] = []
    for member in split_list(value):
        name, eq, argument = member.partition("=")
        name = name.strip(" \t").lower()
        if name:
            # RFC 9111 5.2: recipients "ought to accept both forms" (token, quoted).
            pairs.append((name, unquote(argument.strip(" \t")) if eq else None))
    return pairs


def parse_cache_control(value: str | None) -> CacheControl:
    """The directives of a Cache-Control value (several lines joined by ", ").

    Names are case-insensitive and arguments may be quoted (RFC 9111 5.2). An
    invalid max-age / s-maxage counts as 0 (stale, RFC 9111 4.2.1); other invalid
    numbers are ignored; numbers beyond 2^31 become 2147483648 (RFC 9111 1.2.2).
    """
    if not value:
        return EMPTY
    if len(value) <= _MEMO_VALUE:
        return _parse_remembered(value)
    return _parse(value)


def _parse(value: str) -> CacheControl:
    builder = _Builder()
    for name, argument in _directives(value):
        _apply(builder, name, argument)
    return builder.build()


#: Parsed values remembered by their text: a miss parses its answer's Cache-Control
#: more than once (storability, then the stored metadata) and most answers share a
#: handful of values. The result is immutable; what is remembered is bounded in
#: entries and value length (a client's values pass through here too).
_MEMO_SIZE = 512
_MEMO_VALUE = 256
_parse_remembered = functools.lru_cache(maxsize=_MEMO_SIZE)(_parse)


def parse_surrogate_control(value: str | None) -> CacheControl | None:
    """The directives this CDN takes from Surrogate-Control, or None if it has none.

    Only max-age, no-store, stale-while-revalidate and stale-if-error are read.
    Edge Architecture 1.0 allows `max-age=60+30` (freshness + extension); the first
    number is the lifetime. Targeting suffixes (`;device`) are not supported.
    """
    if not value:
        return None
    builder = _Builder()
    for name, argument in _directives(value):
        if name not in _SURROGATE_DIRECTIVES:
            continue
        if name == "max-age" and argument is not None and "+" in argument:
            argument = argument.partition("+")[0]
        _apply(builder, name, argument)
    return builder.build() if builder.seen else None


def parse_cdn_cache_control(value: str | None) -> CacheControl | None:
    """The directives of a CDN-Cache-Control value, or None if it is empty or invalid.

    RFC 9213 2.1: the field is a Structured Field Dictionary; a value that fails to
    parse is ignored as a whole. Directives keep their Cache-Control meaning, and
    "implementations SHOULD NOT consume values that violate these inferred
    constraints", so `max-age=1.5` or `no-store="x"` are ignored directive by
    directive. A repeated key overwrites (RFC 8941 4.2.2).
    """
    if not value or not value.strip(" \t"):
        return None
    members = parse_dictionary(value)
    if members is None:
        return None
    builder = _Builder()
    for name, member in members.items():
        _apply_structured(builder, name, member)
    return builder.build()


def _apply_structured(builder: _Builder, name: str, member: Member) -> None:
    """Record one Dictionary member as a cache directive, if its type fits."""
    value = member.value
    if value is True:
        _apply(builder, name, None)
    elif value is False:
        return  # `no-store=?0` says the directive is off
    elif name in _SMALLEST_WINS or name in _LARGEST_WINS:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            builder.number(name, value)
    elif name in ("no-cache", "private"):
        if isinstance(value, str):
            builder.fields(name, split_list(value))
        elif isinstance(value, tuple):
            builder.fields(name, [item for item, _ in value if isinstance(item, str)])


def effective_directives(headers: Headers) -> tuple[CacheControl, str]:
    """The response directives this CDN obeys, and the field they came from.

    RFC 9213 2.2: a cache "MUST select the first (in target list order) field with a
    valid, non-empty value ... and it MUST ignore the Cache-Control and Expires
    header fields in that response" — so when the answer is not "cache-control",
    the caller must also ignore Expires. Our target list is Edgeshield-CDN-Cache-Control,
    then CDN-Cache-Control, then Surrogate-Control (when it carries a directive we
    read), then Cache-Control.
    """
    for name in TARGETED_FIELDS[:2]:
        values = headers.getall(name, [])
        if values:
            parsed = parse_cdn_cache_control(", ".join(values))
            if parsed is not None:
                return parsed, name
    surrogate = headers.getall("surrogate-control", [])
    if surrogate:
        parsed = parse_surrogate_control(", ".join(surrogate))
        if parsed is not None:
            return parsed, "surrogate-control"
    return parse_cache_control(", ".join(headers.getall("cache-control", []))), "cache-control"


def request_directives(headers: Headers) -> CacheControl:
    """A request's Cache-Control directives, every line of the field as one list
    (RFC 9111 5.2.1)."""
    return parse_cache_control(", ".join(headers.getall("cache-control", [])))
