"""The header-map seam of `edge.cache` and the RFC 9110 list syntax.

Policy code reads headers through `Headers`, a protocol that multidict's
`CIMultiDict` / `CIMultiDictProxy` (what aiohttp hands us) already satisfy, so the
pure modules never import aiohttp.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, overload

_T = TypeVar("_T")


class Headers(Protocol):
    """A case-insensitive, multi-valued, read-only header map (field name → lines)."""

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, /, default: _T) -> str | _T: ...
    @overload
    def getall(self, key: str, /) -> list[str]: ...
    @overload
    def getall(self, key: str, /, default: _T) -> list[str] | _T: ...


def split_list(value: str) -> list[str]:
    """Split one field value into its comma-separated members (RFC 9110 5.6.1).

    Commas inside a quoted-string (RFC 9110 5.6.4, with backslash quoted-pairs) do
    not separate members. Members are stripped of OWS; empty members are dropped,
    as "a recipient MUST parse and ignore a reasonable number of empty list
    elements".
    """
    members: list[str] = []
    start = 0
    in_quotes = False
    escaped = False
    for i, char in enumerate(value):
        if in_quotes:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == ",":
            members.append(value[start:i])
            start = i + 1
    members.append(value[start:])
    return [m for m in (member.strip(" \t") for member in members) if m]


def header_list_values(headers: Headers, name: str) -> list[str]:
    """All list members of every field line named `name`, in order (RFC 9110 5.6.1).

    Several field lines of one name are equivalent to one line joined by commas
    (RFC 9110 5.3), so members are collected across lines.
    """
    members: list[str] = []
    for line in headers.getall(name, []):
        members.extend(split_list(line))
    return members


def unquote(value: str) -> str:
    """The content of a quoted-string (RFC 9110 5.6.4), or `value` itself if unquoted.

    Quoted-pairs (backslash + character) stand for the character.
    """
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    inner = value[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    escaped = False
    for char in inner:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_token(value: str) -> bool:
    """Whether `value` is an RFC 9110 5.6.2 token (1*tchar)."""
    return bool(value) and all(char in _TCHARS for char in value)
