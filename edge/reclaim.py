"""Giving back the disk space of objects a hard purge made unservable.

Purge rules are checked at lookup (a purge costs the same however many objects it
covers), so a purged object stays on disk until something removes it. This sweep
does, in the background and in batches, reading only index rows (it never promotes
cold objects into the memory tier, which would evict hot ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from edge.cache.model import ObjectMeta
from edge.cache.purge import PurgeRules, PurgeVerdict
from edge.store import ObjectStore

log = logging.getLogger("edgeshield.reclaim")

#: Seconds between sweeps (a sweep only runs when a rule was applied since the last).
RECLAIM_INTERVAL = 30.0
BATCH = 500


async def reclaim_purged_once(store: ObjectStore, rules: PurgeRules) -> int:
    """Delete every stored object a hard purge covers; returns how many went."""
    keys = await store.keys()
    deleted = 0
    for start in range(0, len(keys), BATCH):
        for key, meta in await store.metas(keys[start : start + BATCH]):
            if not isinstance(meta, ObjectMeta):
                continue
            verdict = rules.verdict(
                meta.service, meta.host, meta.target, meta.surrogate_keys, meta.stored_at
            )
            if verdict is PurgeVerdict.GONE:
                await store.delete(key)
                deleted += 1
        await asyncio.sleep(0)  # let requests through between batches
    return deleted


async def reclaim_purged_forever(
    store: ObjectStore, rules: PurgeRules, interval: float = RECLAIM_INTERVAL
) -> None:
    """Sweep whenever rules changed since the last sweep, every `interval` seconds."""
    swept_version = 0
    while True:
        await asyncio.sleep(interval)
        if rules.version == swept_version:
            continue
        swept_version = rules.version
        with contextlib.suppress(Exception):
            deleted = await reclaim_purged_once(store, rules)
            if deleted:
                log.info("reclaimed %d purged objects", deleted)
