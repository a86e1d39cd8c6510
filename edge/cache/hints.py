"""Informational responses (RFC 9110 15.2) and Early Hints (RFC 8297), as values.

A 1xx is never a response of its own: it is forwarded to the client before the
final one and never stored or reused (RFC 9111 3: "the response status code is
final"). `forwardable_informational` says which an intermediary passes on; and
`early_hints` picks, from a stored response, the Link fields worth sending in a
103 while the node goes upstream, as Cloudflare's Early Hints does from the Link
headers of earlier responses.
"""

from __future__ import annotations

from edge.cache.headers import split_list
from edge.cache.model import HeaderPairs

#: Link relations a 103 carries (RFC 8297 2: hints a client may act on early).
HINT_RELATIONS = frozenset({"preload", "preconnect", "modulepreload", "dns-prefetch"})
#: Bounds on a 103 we write: members, and bytes of Link values in all.
MAX_HINTS = 16
MAX_HINT_BYTES = 4096


def forwardable_informational(status: int) -> bool:
    """RFC 9110 15.2: "A proxy MUST forward 1xx responses unless the proxy itself
    requested the generation of the 1xx response". 100 answers an Expect this hop
    handles itself, and 101 switches protocols on one connection only; every other
    1xx (102 Processing, 103 Early Hints, codes not yet registered) goes on."""
    return 100 <= status <= 199 and status not in (100, 101)


def early_hints(pairs: HeaderPairs) -> tuple[str, ...]:
    """The Link members of a stored response that make sense in a 103: those whose
    rel is one of HINT_RELATIONS, at most MAX_HINTS of them and MAX_HINT_BYTES in
    all (a hostile origin's Link list is bounded before it is repeated)."""
    hints: list[str] = []
    size = 0
    for name, value in pairs:
        if name.lower() != "link":
            continue
        for member in split_list(value):
            if not _hinted_relation(member):
                continue
            if len(hints) >= MAX_HINTS or size + len(member) > MAX_HINT_BYTES:
                return tuple(hints)
            hints.append(member)
            size += len(member)
    return tuple(hints)


def _hinted_relation(member: str) -> bool:
    """Whether a Link member (`<uri>; rel=preload; as=style`) has a hinted rel."""
    if not member.startswith("<") or ">" not in member:
        return False
    for param in member.split(">", 1)[1].split(";"):
        name, _, value = param.strip(" \t").partition("=")
        if name.strip(" \t").lower() == "rel":
            relations = value.strip(" \t").strip('"').lower().split()
            return any(rel in HINT_RELATIONS for rel in relations)
    return False
