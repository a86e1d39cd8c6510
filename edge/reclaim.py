"""Giving back the disk space of objects a hard purge made unservable.

Purge rules are checked at lookup (a purge costs the same however many objects it
covers), so a purged object stays on disk until something removes it. This sweep
does, in the background, reading only index rows (it never promotes cold objects
into the memory tier, which would evict hot ones).

What it reads follows what the rules named since its last sweep
(`PurgeRules.take_reclaim`): a hard purge by URL, or an invalidation by an unsafe
request, names its objects' keys, and only those keys and their variants' are read,
so that a node of 10^6 objects does not read every row after each URL purge (each
deploy purges some; each POST invalidates one). A hard purge by prefix, tag or
everything can cover any object: the whole store is read then, a page at a time,
and paced to a bounded share of the worker's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from edge.cache.keys import VARIANT_SEPARATOR
from edge.cache.model import ObjectMeta
from edge.cache.purge import PurgeRules, PurgeVerdict
from edge.store import ObjectStore

log = logging.getLogger("edgeshield.reclaim")

__all__ = [
    "BATCH",
    "RECLAIM_INTERVAL",
    "SCAN_SHARE",
    "reclaim_keys",
    "reclaim_purged_forever",
    "reclaim_purged_once",
]

#: Seconds between sweeps (a sweep only runs when a rule was applied since the last).
RECLAIM_INTERVAL = 30.0
#: keys read at a time
BATCH = 500
#: the most of the worker's time a scan of the whole store takes: after each page it
#: waits long enough to keep to this share
SCAN_SHARE = 0.2


async def reclaim_purged_once(store: ObjectStore, rules: PurgeRules, pace: bool = False) -> int:
    """Delete every stored object a hard purge covers, reading the whole store a page
    at a time (`pace`: at most `SCAN_SHARE` of the time); how many went."""
    deleted = 0
    cursor = 0
    while True:
        started = time.monotonic()
        keys, cursor = await store.keys_page(cursor, BATCH)
        if not keys:
            return deleted
        deleted += await _delete_gone(store, rules, keys)
        took = time.monotonic() - started
        # let requests through between pages, and when pacing, keep to the share
        await asyncio.sleep(took * (1 / SCAN_SHARE - 1) if pace else 0)


async def reclaim_keys(store: ObjectStore, rules: PurgeRules, bases: list[str]) -> int:
    """Delete the objects of the primary keys `bases` and of their variants that a hard
    purge covers; how many went. Reads only their rows."""
    deleted = 0
    for start in range(0, len(bases), BATCH):
        keys = await store.keys_of(bases[start : start + BATCH], VARIANT_SEPARATOR, 10 * BATCH)
        deleted += await _delete_gone(store, rules, keys)
        await asyncio.sleep(0)
    return deleted


async def _delete_gone(store: ObjectStore, rules: PurgeRules, keys: list[str]) -> int:
    """Delete those of `keys` whose objects a hard purge covers; how many."""
    deleted = 0
    for key, meta in await store.metas(keys):
        if not isinstance(meta, ObjectMeta):
            continue
        verdict = rules.verdict(
            meta.service, meta.host, meta.target, meta.surrogate_keys, meta.stored_at
        )
        if verdict is PurgeVerdict.GONE:
            await store.delete(key)
            deleted += 1
    return deleted


async def reclaim_purged_forever(
    store: ObjectStore, rules: PurgeRules, interval: float = RECLAIM_INTERVAL
) -> None:
    """Sweep whenever rules changed since the last sweep, every `interval` seconds:
    the keys the rules named, or the whole store, paced, when they may cover any."""
    rules.track_reclaim()
    swept_version = 0
    while True:
        await asyncio.sleep(interval)
        if rules.version == swept_version:
            continue
        swept_version = rules.version
        scan, bases = rules.take_reclaim()
        with contextlib.suppress(Exception):
            if scan:
                deleted = await reclaim_purged_once(store, rules, pace=True)
            else:
                deleted = await reclaim_keys(store, rules, bases)
            if deleted:
                log.info("reclaimed %d purged objects", deleted)
