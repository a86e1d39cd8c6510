"""Cache inspection on the admin listener: `GET /v1/cache?url=URL` says what this node
holds for a URL, as the request path would find it.

For the URL's cache key (the service's key policy applied, as the engine does): the
primary entry and, when the URL varies, each stored variant, with its size by
encoding, age, freshness left, validators, whether its bodies carry a checksum (and,
with `verify=1`, whether they still match it), and the purge verdict the node's rules
give it now.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from edge.cache.keys import normalize_target, origin_form, primary_key
from edge.cache.model import ObjectMeta, VaryIndex
from edge.cache.purge import PurgeRules, PurgeVerdict
from edge.store import BodyGone, DiskStore, StoredEntry, body_checksum, read_body
from fleet.config import Service

__all__ = ["cache_view"]

#: the longest URL inspected (a longer one is refused, never echoed)
MAX_URL = 8192


def cache_view(
    services: Callable[[], tuple[Service, ...]],
    store: DiskStore,
    rules: PurgeRules,
    clock: Callable[[], float] = time.time,
) -> Callable[[web.Request], Any]:
    """The handler of `GET /v1/cache?url=URL[&verify=1]` (`services`: the node's
    services now, so a reload is seen)."""

    async def view(request: web.Request) -> web.Response:
        url = request.query.get("url", "")
        if not url or len(url) > MAX_URL:
            return _error("give ?url=http://HOST/PATH (at most 8 KiB)")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return _error("url must be absolute: http://HOST/PATH")
        host = parts.hostname.rstrip(".")
        service = next((s for s in services() if host in s.hosts), None)
        if service is None:
            return _error("no service of this fleet serves that host", status=404)
        raw_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        target = normalize_target(
            origin_form(raw_target), service.cache_key.sort_query, service.cache_key.drop_params
        )
        key = primary_key(service.name, host, target)
        verify = request.query.get("verify") == "1"
        now = clock()
        entry = await store.get(key)
        answer: dict[str, Any] = {
            "url": url[:200],
            "service": service.name,
            "key": key,
            "cached": entry is not None,
            "purge_rules_applied_seq": rules.applied_seq,
        }
        if entry is None:
            return web.json_response(answer)
        if isinstance(entry.meta, VaryIndex):
            answer["vary"] = list(entry.meta.fields)
            variants = []
            for variant in entry.meta.variants:
                stored = await store.get(variant)
                if stored is not None:
                    variants.append(await _describe(stored, rules, now, verify))
            answer["variants"] = variants
        else:
            answer["variants"] = [await _describe(entry, rules, now, verify)]
        answer["cached"] = bool(answer["variants"])
        return web.json_response(answer)

    return view


async def _describe(
    entry: StoredEntry, rules: PurgeRules, now: float, verify: bool
) -> dict[str, Any]:
    """One stored object, as a person reads it."""
    meta = entry.meta
    described: dict[str, Any] = {
        "size": {ref.encoding: ref.size for ref in entry.bodies.values()},
        "checksum": {
            ref.encoding: "recorded" if ref.checksum is not None else "none"
            for ref in entry.bodies.values()
        },
    }
    if verify:
        described["checksum"] = {
            ref.encoding: await _verify(entry, ref.encoding) for ref in entry.bodies.values()
        }
    if not isinstance(meta, ObjectMeta):
        return described
    age = meta.age(now)
    verdict = rules.verdict(
        meta.service, meta.host, meta.target, meta.surrogate_keys, meta.stored_at
    )
    described.update(
        {
            "status": meta.status,
            "age": round(age, 3),
            "ttl": round(meta.freshness_lifetime - age, 3),
            "fresh": age < meta.freshness_lifetime,
            "stale_while_revalidate": meta.stale_while_revalidate,
            "stale_if_error": meta.stale_if_error,
            "etag": meta.etag,
            "last_modified": meta.last_modified,
            "content_type": meta.content_type,
            "surrogate_keys": list(meta.surrogate_keys),
            "stored_at": meta.stored_at,
            "purge": _VERDICTS[verdict],
        }
    )
    return described


_VERDICTS = {
    PurgeVerdict.NONE: "none",
    PurgeVerdict.STALE: "stale (a soft purge covers it: revalidated on the next request)",
    PurgeVerdict.GONE: "gone (a hard purge covers it: the next request is a miss)",
}


async def _verify(entry: StoredEntry, encoding: str) -> str:
    """Read a body whole against its checksum: "ok", "corrupt" or "missing". A body
    with its bytes at hand (kept in its index row, or held in memory) is checked as
    it is; one in a file is read from it."""
    ref = entry.bodies[encoding]
    if ref.checksum is None:
        return "none"
    if ref.data is not None:
        return "ok" if body_checksum(ref.data) == ref.checksum else "corrupt"
    try:
        async for _chunk in read_body(ref):
            pass
    except BodyGone as exc:
        return "corrupt" if type(exc).__name__ == "BodyCorrupt" else "missing"
    return "ok"


def _error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)
