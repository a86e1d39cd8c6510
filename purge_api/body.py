"""The purge request body: parsed and checked, or refused with the field at fault.

`{"urls": [], "prefixes": [], "tags": [], "all": false, "soft": false}`, any non-empty
combination. URLs and prefixes are absolute (scheme ignored; the host must be one
of the service's) or a path starting with "/" (that path on every host).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from fleet.config import Service
from runtime.purge_wire import PurgeRequest

__all__ = ["BodyError", "BodyTooLarge", "PurgeRequest", "parse_purge_body", "shorten"]

_FIELDS = ("urls", "prefixes", "tags", "all", "soft")
MAX_ITEM_LENGTH = 8192
#: characters of client input an error message quotes, at most
QUOTE_LENGTH = 64


def shorten(text: str) -> str:
    """`text` as an error message may quote it: repr'd, at most QUOTE_LENGTH characters."""
    quoted = repr(text[:QUOTE_LENGTH])
    return quoted + "..." if len(text) > QUOTE_LENGTH else quoted


class BodyError(Exception):
    """A purge body that cannot be used; `field` names what is wrong (HTTP 400)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class BodyTooLarge(Exception):
    """More items than a purge may carry (HTTP 413)."""


def parse_purge_body(raw: bytes, service: Service, max_items: int) -> PurgeRequest:
    """A checked PurgeRequest from the raw body; BodyError or BodyTooLarge if not."""
    try:
        data: Any = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except UnicodeDecodeError as exc:
        raise BodyError("body", f"not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BodyError("body", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("body", "JSON nested too deeply") from None
    except ValueError as exc:
        # e.g. an integer of more digits than Python converts (sys.int_info)
        raise BodyError("body", f"not usable JSON: {str(exc)[:100]}") from None
    if not isinstance(data, dict):
        raise BodyError("body", 'expected a JSON object such as {"urls": ["/a"]}')
    for key in data:
        if key not in _FIELDS:
            raise BodyError(key[:QUOTE_LENGTH], f"not a known field (known: {', '.join(_FIELDS)})")
    lists = {name: _strings(data, name) for name in ("urls", "prefixes", "tags")}
    count = sum(len(items) for items in lists.values())
    if count > max_items:
        raise BodyTooLarge(f"too many items: {count} urls, prefixes and tags; at most {max_items}")
    for name in ("urls", "prefixes"):
        for index, item in enumerate(lists[name]):
            _check_location(f"{name}[{index}]", item, service)
    for index, tag in enumerate(lists["tags"]):
        if any(ch.isspace() for ch in tag) or len(tag) > MAX_ITEM_LENGTH or not _unicode(tag):
            raise BodyError(
                f"tags[{index}]",
                "a surrogate key has no spaces, is valid Unicode and at most 8192 characters",
            )
    flags = {}
    for name in ("all", "soft"):
        value = data.get(name, False)
        if not isinstance(value, bool):
            raise BodyError(name, "expected true or false")
        flags[name] = value
    if not count and not flags["all"]:
        raise BodyError("body", 'nothing to purge: give urls, prefixes, tags or "all": true')
    return PurgeRequest(
        urls=lists["urls"],
        prefixes=lists["prefixes"],
        tags=lists["tags"],
        all=flags["all"],
        soft=flags["soft"],
    )


def _strings(data: dict[str, Any], name: str) -> tuple[str, ...]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise BodyError(name, "expected a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise BodyError(f"{name}[{index}]", "expected a non-empty string")
    return tuple(value)


def _unicode(text: str) -> bool:
    """Whether `text` has no lone surrogates (JSON's "\\ud800" escapes allow them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_location(where: str, item: str, service: Service) -> None:
    """An absolute http(s) URL on one of the service's hosts, or a path."""
    if len(item) > MAX_ITEM_LENGTH or any(ch.isspace() or ord(ch) < 32 for ch in item):
        raise BodyError(where, "has spaces or control characters, or is over 8192 characters")
    if not _unicode(item):
        raise BodyError(where, "is not valid Unicode (a lone surrogate)")
    if item.startswith("/"):
        if item.startswith("//"):
            raise BodyError(where, "a path must not start with //")
        return
    try:
        parts = urlsplit(item)
        host = (parts.hostname or "").lower()
    except ValueError as exc:
        raise BodyError(where, f"not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise BodyError(where, "expected an absolute http(s) URL or a path starting with /")
    if host not in service.hosts:
        raise BodyError(
            where,
            f"host {shorten(host)} is not a host of service {service.name!r}"
            f" ({', '.join(service.hosts)})",
        )
