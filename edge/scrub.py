"""The background scrubber: re-reads stored bodies and checks their checksums.

Every body carries the checksum taken while it was written (`edge.store`). Reads that
load a body whole (the memory tier) or stream it whole check it on the way, but a
body nobody asks for, or one served only in ranges, could lie damaged on disk for
long; this sweep walks the whole store at a bounded rate (`scrub_rate` bytes per
second per node, so it never competes much with traffic for the disk) and drops
every object with a body that fails, counted in `edgeshield_store_corrupt_total`.
It runs on worker 0 only, like the purge reclaim sweep.
"""

from __future__ import annotations

import asyncio
import logging

from edge.store import ObjectStore, StoreError

log = logging.getLogger("edgeshield.scrub")

#: Seconds between the end of one pass over the store and the start of the next.
SCRUB_PAUSE = 60.0
#: keys read from the store at a time
KEYS_PAGE = 1000

__all__ = ["KEYS_PAGE", "SCRUB_PAUSE", "scrub_forever", "scrub_once"]


async def scrub_once(store: ObjectStore, rate: int) -> int:
    """One pass over every stored object at about `rate` bytes/s (the disk store
    charges each object at least `SCRUB_OBJECT_MIN` bytes); the bytes read."""
    total = 0
    cursor = 0
    while True:
        # a page at a time: a list of every key would be held for the whole pass
        keys, cursor = await store.keys_page(cursor, KEYS_PAGE)
        if not keys:
            return total
        for key in keys:
            try:
                total += await store.scrub(key, rate)
            except StoreError as exc:
                log.warning("scrubbing %r: %s", key, exc)
            await asyncio.sleep(0)  # let requests through between objects


async def scrub_forever(store: ObjectStore, rate: int, pause: float = SCRUB_PAUSE) -> None:
    """Scrub the store pass after pass, `pause` seconds apart; returns at once when
    `rate` is 0 (scrubbing turned off)."""
    if rate <= 0:
        return
    while True:
        try:
            await scrub_once(store, rate)
        except StoreError as exc:
            log.warning("scrub pass stopped: %s", exc)
        await asyncio.sleep(pause)
