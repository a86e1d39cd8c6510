"""Traffic rules compiled: a rule's match made one predicate, cheapest conditions
first, and rules indexed by the first path segment their prefix fixes, so a request
scans a handful of candidates; the path and cookies read the way every rule reads
them. Pure, like the rest of `edge.cache`."""

from __future__ import annotations

import re
from collections.abc import Callable

from edge.cache.headers import Headers
from edge.cache.keys import normalize_path, remove_dot_segments
from fleet.rules import Rule, RuleMatch

#: (method, path segment) candidate tables a rule index keeps
MAX_METHOD_TABLES = 1024

_SLASHES = re.compile(r"/{2,}")

Predicate = Callable[[str, str, str, str, Headers], bool]


def rule_path(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form target, the path normalised the way cache keys
    are (RFC 3986 6.2.2), so "/%61dmin" and "/x/../admin" meet a rule on "/admin";
    runs of slashes count as one (as nginx's merge_slashes and many origins do), so
    "//admin" cannot slip past a rule that an origin merging slashes would serve."""
    path, _, query = target.partition("?")
    path = remove_dot_segments(normalize_path(path))
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return path, query


def cookie_value(headers: Headers, name: str) -> str | None:
    """The value of cookie `name` in the request's Cookie fields (RFC 6265 5.4), or
    None; the first occurrence wins."""
    for line in headers.getall("cookie", []):
        for part in line.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key.strip() == name:
                return value.strip()
    return None


def compile_match(match: RuleMatch) -> Predicate:
    """A predicate for `match`, cheapest conditions first; the all-matching match
    compiles to a function that returns True at once."""
    checks: list[Predicate] = []
    if match.methods:
        methods = frozenset(match.methods)
        checks.append(lambda m, h, p, q, hd: m in methods)
    if match.path_prefix:
        prefix = match.path_prefix
        checks.append(lambda m, h, p, q, hd: p.startswith(prefix))
    if match.hosts:
        hosts = frozenset(match.hosts)
        checks.append(lambda m, h, p, q, hd: h in hosts)
    if match.query_param:
        param = match.query_param
        checks.append(lambda m, h, p, q, hd: _has_param(q, param))
    if match.path_regex is not None:
        search = match.path_regex.search
        checks.append(lambda m, h, p, q, hd: search(p) is not None)
    if match.header is not None:
        name, value_search = match.header.name, match.header.value_regex.search
        checks.append(lambda m, h, p, q, hd: _header_matches(hd, name, value_search))
    if not checks:
        return lambda m, h, p, q, hd: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda m, h, p, q, hd: first(m, h, p, q, hd) and second(m, h, p, q, hd)
    return lambda m, h, p, q, hd: all(c(m, h, p, q, hd) for c in checks)


def _has_param(query: str, name: str) -> bool:
    if not query:
        return False
    return any(part.partition("=")[0] == name for part in query.split("&"))


def _header_matches(headers: Headers, name: str, search: Callable[[str], object]) -> bool:
    value = headers.get(name)
    return value is not None and search(value) is not None


Compiled = tuple[tuple[Predicate, Rule], ...]


class SegmentIndex:
    """Rules indexed by the first path segment their `path_prefix` fixes.

    A rule on "/static/" can only match a path whose first segment is "static", so a
    request looks at the rules of its own first segment and those that fix none
    ("/admin" also matches "/administrator"; no prefix at all), in rule order: with
    many rules on distinct sections a request scans a handful, not all of them.
    """

    def __init__(self, rules: list[Rule]) -> None:
        compiled = [(compile_match(r.match), r) for r in rules]
        anywhere = [c for c in compiled if _segment(c[1].match) is None]
        by_segment: dict[str, list[tuple[Predicate, Rule]]] = {}
        for entry in compiled:
            segment = _segment(entry[1].match)
            if segment is not None:
                by_segment.setdefault(segment, []).append(entry)
        self.anywhere: Compiled = tuple(anywhere)
        self.by_segment: dict[str, Compiled] = {
            segment: tuple(sorted([*entries, *anywhere], key=lambda c: c[1].index))
            for segment, entries in by_segment.items()
        }
        self.empty = not compiled
        #: (method, segment or None) → the candidates less rules for other methods
        self._by_method: dict[tuple[str, str | None], Compiled] = {}

    def candidates(self, method: str, path: str) -> Compiled:
        """The rules that may match a `method` request for `path`, in rule order."""
        segment: str | None = path[1:].partition("/")[0]
        if segment not in self.by_segment:
            segment = None
        found = self._by_method.get((method, segment))
        if found is None:
            base = self.anywhere if segment is None else self.by_segment[segment]
            found = tuple(c for c in base if not c[1].match.methods or method in c[1].match.methods)
            if len(self._by_method) >= MAX_METHOD_TABLES:
                # methods are the client's to choose: the table stays bounded
                self._by_method.clear()
            self._by_method[(method, segment)] = found
        return found


def _segment(match: RuleMatch) -> str | None:
    """The first path segment a match's prefix fixes ("/static/img" → "static";
    "/admin" → None, as it also matches "/administrator")."""
    segment, slash, _ = match.path_prefix[1:].partition("/")
    return segment if slash else None
