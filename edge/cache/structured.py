"""A Structured Field Dictionary parser (RFC 8941 4.2.2), enough for CDN-Cache-Control.

RFC 9213 2.1 defines targeted cache-control fields as Dictionaries. A value that
fails to parse is `None`: the caller then ignores the whole field, as RFC 8941 4.2
asks ("fail parsing ... the entire field value is ignored").
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

BareItem = int | float | str | bytes | bool
Parameters = dict[str, BareItem]


class Token(str):
    """An sf-token, kept apart from an sf-string so a consumer can tell them apart."""


@dataclass(frozen=True)
class Member:
    """One Dictionary member: a bare item or an Inner List, with its parameters."""

    value: BareItem | tuple[tuple[BareItem, Parameters], ...]
    params: Parameters


_LCALPHA = frozenset("abcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset("0123456789")
_KEY_CHARS = _LCALPHA | _DIGITS | frozenset("_-.*")
_ALPHA = _LCALPHA | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN_CHARS = _ALPHA | _DIGITS | frozenset("!#$%&'*+-.^_`|~:/")


class _Fail(Exception):
    """Internal: the input is not a valid Structured Field (never escapes this module)."""


def parse_dictionary(value: str) -> dict[str, Member] | None:
    """The members of a Dictionary field value, or None if it does not parse."""
    try:
        return _Parser(value).dictionary()
    except _Fail:
        return None


class _Parser:
    """A cursor over one field value, following the algorithms of RFC 8941 4.2."""

    def __init__(self, text: str) -> None:
        if not text.isascii():
            raise _Fail
        self.text = text.strip(" ")
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise _Fail
        self.pos += 1
        return char

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.pos += 1

    def dictionary(self) -> dict[str, Member]:
        members: dict[str, Member] = {}
        while self.peek():
            key = self.key()
            if self.peek() == "=":
                self.pos += 1
                member = self.item_or_inner_list()
            else:
                member = Member(True, self.parameters())
            members[key] = member  # RFC 8941 4.2.2: a repeated key overwrites
            self.skip(" \t")
            if not self.peek():
                break
            if self.take() != ",":
                raise _Fail
            self.skip(" \t")
            if not self.peek():
                raise _Fail  # a trailing comma
        return members

    def key(self) -> str:
        first = self.peek()
        if not first or (first not in _LCALPHA and first != "*"):
            raise _Fail
        start = self.pos
        while self.peek() and self.peek() in _KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def parameters(self) -> Parameters:
        params: Parameters = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip(" ")
            key = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params[key] = value
        return params

    def item_or_inner_list(self) -> Member:
        if self.peek() == "(":
            self.pos += 1
            items: list[tuple[BareItem, Parameters]] = []
            while True:
                self.skip(" ")
                if self.peek() == ")":
                    self.pos += 1
                    return Member(tuple(items), self.parameters())
                item = self.bare_item()
                items.append((item, self.parameters()))
                if self.peek() not in (" ", ")"):
                    raise _Fail
        item = self.bare_item()
        return Member(item, self.parameters())

    def bare_item(self) -> BareItem:
        char = self.peek()
        if char == "-" or (char and char in _DIGITS):
            return self.number()
        if char == '"':
            return self.string()
        if char == "*" or (char and char in _ALPHA):
            return self.token()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            self.pos += 1
            flag = self.take()
            if flag not in "01":
                raise _Fail
            return flag == "1"
        raise _Fail

    def number(self) -> int | float:
        start = self.pos
        if self.peek() == "-":
            self.pos += 1
        digits_start = self.pos
        while self.peek() and self.peek() in _DIGITS:
            self.pos += 1
        int_part = self.text[digits_start : self.pos]
        if not int_part:
            raise _Fail
        if self.peek() != ".":
            if len(int_part) > 15:
                raise _Fail
            return int(self.text[start : self.pos])
        if len(int_part) > 12:
            raise _Fail
        self.pos += 1
        frac_start = self.pos
        while self.peek() and self.peek() in _DIGITS:
            self.pos += 1
        if not 1 <= self.pos - frac_start <= 3:
            raise _Fail
        return float(self.text[start : self.pos])

    def string(self) -> str:
        self.pos += 1
        out: list[str] = []
        while True:
            char = self.take()
            if char == '"':
                return "".join(out)
            if char == "\\":
                escaped = self.take()
                if escaped not in '"\\':
                    raise _Fail
                out.append(escaped)
            elif " " <= char <= "~":
                out.append(char)
            else:
                raise _Fail

    def token(self) -> Token:
        start = self.pos
        self.pos += 1
        while self.peek() and self.peek() in _TOKEN_CHARS:
            self.pos += 1
        return Token(self.text[start : self.pos])

    def byte_sequence(self) -> bytes:
        self.pos += 1
        end = self.text.find(":", self.pos)
        if end < 0:
            raise _Fail
        encoded = self.text[self.pos : end]
        self.pos = end + 1
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Fail from exc
