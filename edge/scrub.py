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
#: The least an object is charged against the rate, whatever its size: checking one
#: costs an index read, a file open and a hop to the I/O gateway besides its bytes,
#: so charged only its bytes a store of 1 KiB objects was swept thousands a second
#: (6% of a busy event loop); at the default 8 MiB/s this is 128 objects a second.
OBJECT_FLOOR = 64 * 1024

__all__ = ["OBJECT_FLOOR", "SCRUB_PAUSE", "scrub_forever", "scrub_once"]


async def scrub_once(store: ObjectStore, rate: int) -> int:
    """One pass over every stored object at about `rate` bytes/s, each object charged
    at least `OBJECT_FLOOR` bytes; the bytes read."""
    total = 0
    for key in await store.keys():
        done = 0
        try:
            done = await store.scrub(key, rate)
        except StoreError as exc:
            log.warning("scrubbing %r: %s", key, exc)
        total += done
        # the store slept for the bytes it read; the rest of the floor is slept here
        await asyncio.sleep(max(OBJECT_FLOOR - done, 0) / rate)
    return total


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
