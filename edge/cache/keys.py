"""Cache keys: the request target, the primary key, Vary's secondary key, surrogate keys.

`normalize_target` is applied once per request, and its result is both the key's
target and what goes upstream, so the cache never keys on something the origin
does not see (a classic cache-poisoning gap). Lookups, fills, invalidations and purge
rules all go through it, so "/./x", "/a/../x" and "/%2e/x" are one key, "/x", and the
origin is asked for "/x".
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from fnmatch import translate
from urllib.parse import unquote

from edge.cache.encoding import normalize_accept_encoding
from edge.cache.headers import Headers, header_list_values

_HEX = frozenset("0123456789abcdefABCDEF")
# RFC 3986 2.3: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_path(path: str) -> str:
    """`path` with percent-encoding normalised (RFC 3986 6.2.2.1 and 6.2.2.2).

    Escapes of unreserved characters are decoded ("%7E" → "~"); other escapes get
    uppercase hex ("%2f" → "%2F"). A "%" not followed by two hex digits is kept.
    """
    if "%" not in path:
        return path
    out: list[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char == "%" and i + 2 < len(path) and path[i + 1] in _HEX and path[i + 2] in _HEX:
            decoded = chr(int(path[i + 1 : i + 3], 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + path[i + 1 : i + 3].upper())
            i += 3
        else:
            out.append(char)
            i += 1
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """`path` without "." and ".." segments (RFC 3986 5.2.4, as 6.2.2.3 asks).

    Run after percent-decoding of unreserved characters, so "%2e%2e" counts as "..";
    an escaped slash ("%2F") is not a separator. ".." never climbs above the root.
    A last segment that was "." or ".." leaves a trailing "/", as the RFC's
    algorithm does ("/a/b/.." → "/a/").
    """
    if "." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    result = "/".join(out)
    if path.startswith("/") and not result.startswith("/"):
        result = "/" + result
    return result


def origin_form(target: str) -> str:
    """The origin-form part ("/path?query") of a request target.

    An absolute-form target ("http://host:port/path?q", RFC 9112 3.2.2, which a
    client may send to any server) loses its scheme and authority, the part that
    names the host; "http://host" alone is "/". Anything else is returned unchanged.
    """
    lower = target[:8].lower()
    if not lower.startswith(("http://", "https://")):
        return target
    rest = target.split("://", 1)[1]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=-1)
    if cut < 0:
        return "/"
    path = rest[cut:]
    return path if path.startswith("/") else "/" + path


def normalize_target(target: str, sort_query: bool, drop_params: tuple[str, ...]) -> str:
    """The origin-form target ("/path?query") as this CDN keys it and forwards it.

    The path's percent-encoding is normalised and its dot segments removed. Query
    parameters whose (decoded) name matches one of `drop_params` (fnmatch patterns,
    case-sensitive, e.g. "utm_*") are removed; with `sort_query` the rest are ordered
    by name, keeping the original order among equal names (a stable sort), since an
    origin may read repeated names as a list. Parameters stay byte-exact; empty "&&" members go; a
    query left empty loses its "?". A fragment, if a client sent one, is dropped.
    """
    if "%" not in target and "/." not in target and "#" not in target and target[:1] != ".":
        # no escape, dot segment or fragment: the path is as keyed (most targets),
        # and so is a query of one parameter that is not dropped, or of several
        # with nothing to sort, drop or leave out ("&&"): kept as they are, not
        # taken apart and rebuilt
        path, has_query, query = target.partition("?")
        if not has_query:
            return target
        if query and "&" not in query:
            if not drop_params or not _dropped_names(drop_params)(query.partition("=")[0]):
                return target
            return path  # its one parameter dropped
        if (
            not sort_query
            and not drop_params
            and "&&" not in query
            and query[:1] not in ("", "&")
            and query[-1] != "&"
        ):
            return target
    target = target.partition("#")[0]
    path, has_query, query = target.partition("?")
    path = remove_dot_segments(normalize_path(path))
    if not has_query:
        return path
    params = [param for param in query.split("&") if param]
    if drop_params:
        dropped = _dropped_names(drop_params)
        params = [param for param in params if not dropped(unquote(param.partition("=")[0]))]
    if sort_query:
        params.sort(key=lambda param: param.partition("=")[0])
    return f"{path}?{'&'.join(params)}" if params else path


#: names of a lone query parameter whose fate (kept or dropped) one `TargetKeys`
#: remembers before it empties its table (the names are the client's)
LONE_NAMES = 4096


class TargetKeys:
    """`normalize_target` of one service's policy, for the hit lanes, which key a
    request before they know whether it is stored: the common target (no escape,
    dot segment or fragment, at most one query parameter) keyed without a call
    into the general case, and whether a lone parameter of a name is dropped
    remembered per name, not matched against the patterns on every request."""

    __slots__ = ("_lone_kept", "drop_params", "sort_query")

    def __init__(self, sort_query: bool, drop_params: tuple[str, ...]) -> None:
        self.sort_query = sort_query
        self.drop_params = drop_params
        #: a lone parameter's name → whether it stays in the key
        self._lone_kept: dict[str, bool] = {}

    def __call__(self, target: str) -> str:
        """The origin-form `target` as `normalize_target` keys it under this policy."""
        if "%" in target or "/." in target or "#" in target or target[:1] == ".":
            return normalize_target(target, self.sort_query, self.drop_params)
        path, has_query, query = target.partition("?")
        if not has_query:
            return target
        if not query or "&" in query:
            return normalize_target(target, self.sort_query, self.drop_params)
        name = query.partition("=")[0]
        kept = self._lone_kept.get(name)
        if kept is None:
            drop = self.drop_params
            kept = not drop or not _dropped_names(drop)(name)
            if len(self._lone_kept) >= LONE_NAMES:
                self._lone_kept.clear()
            self._lone_kept[name] = kept
        return target if kept else path


@functools.lru_cache(maxsize=64)
def _dropped_names(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """One matcher for all of a service's `drop_params` patterns (fnmatchcase's
    meaning: each pattern translated, the whole name matched), made once per set of
    patterns rather than tried pattern by pattern for every parameter of every miss."""
    return re.compile("|".join(f"(?:{translate(pattern)})" for pattern in patterns)).match


def normalize_host(host: str) -> str:
    """`host` lowercased, without a trailing dot, and without port 80 or 443.

    The key does not know the scheme, and this CDN serves the same object on both
    default ports, so both are dropped; any other port stays.
    """
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: [::1]:8080
        literal, _, rest = host.partition("]")
        name, port = literal + "]", rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    name = name.rstrip(".")
    if port in ("", "80", "443"):
        return name
    return f"{name}:{port}"


#: between a primary key and the request's values of the fields it varies on, in the
#: key of a variant (`edge.fill_variants.variant_key`)
VARIANT_SEPARATOR = "\x1f"


def primary_key(service: str, host: str, target: str) -> str:
    """The primary cache key: "{service} {host}{target}" (RFC 9111 4: method and URI).

    `target` must already be normalised by `normalize_target`. Only GET (and HEAD,
    served from GET) responses are stored, so the method is not part of the key.
    Neither host nor target can contain a space, so the key splits unambiguously.
    """
    return f"{service} {normalize_host(host)}{target}"


def surrogate_keys(headers: Headers) -> tuple[str, ...]:
    """The purge tags of a response: `Surrogate-Key` (space-separated) and
    `Cache-Tag` (comma-separated), duplicates removed, first occurrence first."""
    tags: list[str] = []
    for line in headers.getall("surrogate-key", []):
        tags.extend(line.split())
    for tag in header_list_values(headers, "cache-tag"):
        tags.extend(tag.split())
    return tuple(dict.fromkeys(tags))


def vary_fields(headers: Headers) -> tuple[str, ...] | None:
    """The request fields a response varies on, lowercased, sorted, without repeats.

    None for `Vary: *`, which RFC 9111 4.1 says "always fails to match": such a
    response is never stored.
    """
    names = {name.lower() for name in header_list_values(headers, "vary")}
    if "*" in names:
        return None
    return tuple(sorted(names))


# Fields whose values are case-insensitive throughout (codings, charsets, language
# tags; RFC 9110 8.4.1, 12.5.2, 8.5.1), so "EN-us" and "en-US" select one variant.
_CASE_INSENSITIVE = frozenset({"accept-charset", "accept-language"})


def _normalize_value(name: str, lines: list[str]) -> str | None:
    """One request field's value for the secondary key; None when it is absent."""
    if name == "accept-encoding":
        # Equivalent Accept-Encoding values share a variant; absent means identity.
        return normalize_accept_encoding(", ".join(lines) if lines else None)
    if not lines:
        return None
    # RFC 9111 4.1: values are matched after "combining multiple header field lines
    # ... or normalizing both header field values in a way that is known to have
    # identical semantics ... (e.g., ... removing whitespace)".
    value = ", ".join(" ".join(line.split()) for line in lines)
    if name in _CASE_INSENSITIVE:
        value = ",".join(member.lower() for member in value.replace(", ", ",").split(","))
    return value


def secondary_key(vary: tuple[str, ...], request_headers: Headers) -> str:
    """A stable string of the request's values for the fields in `vary`.

    An absent field differs from an empty one (RFC 9111 4.1: "If ... a header field
    is absent from a request, it can only match another request if it is also
    absent there"), except Accept-Encoding, whose absence means identity.
    """
    if not vary:
        return ""
    return json.dumps(
        [[name, _normalize_value(name, request_headers.getall(name, []))] for name in vary],
        separators=(",", ":"),
    )
