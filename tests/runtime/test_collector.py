"""The cyclic collector as a serving process runs it: start-up frozen, young
collections far apart by allocations, and paced by the clock (runtime/collector.py)."""

from __future__ import annotations

import gc
from collections import deque

from runtime.collector import YOUNG_GC_THRESHOLD, CollectorPacer, tune_collector
from tests.support.waiting import eventually

#: long-lived objects in the churn below, each replaced by a new one as in a full
#: memory tier (each a list: a tracked container, as an entry's metadata is)
HELD = 5_000


def test_a_serving_node_collects_young_objects_far_apart() -> None:
    saved = gc.get_threshold()
    try:
        tune_collector()
        young, older, oldest = gc.get_threshold()
        assert young == YOUNG_GC_THRESHOLD > saved[0]
        assert (older, oldest) == saved[1:]
        assert gc.get_freeze_count() > 0  # what start-up made is out of the way
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


def _churn(held: deque[list[int]], count: int) -> None:
    for n in range(count):
        held.append([n])  # pushes the oldest out: one allocation, one deallocation


def test_churn_leaves_the_allocation_count_flat_and_the_young_generation_growing() -> None:
    """Why the pacer exists: replacing old objects with new ones never starts a young
    collection, however many of the new ones are left young."""
    held: deque[list[int]] = deque(maxlen=HELD)
    _churn(held, HELD)
    gc.collect()  # the first ones are old now
    _churn(held, 4 * HELD)
    assert gc.get_count()[0] < 700  # CPython's default threshold: never reached
    assert len(gc.get_objects(0)) >= HELD  # every live one was made since


async def test_the_pacer_collects_what_churn_left_young() -> None:
    held: deque[list[int]] = deque(maxlen=HELD)
    _churn(held, HELD)
    gc.collect()
    _churn(held, 4 * HELD)
    assert len(gc.get_objects(0)) >= HELD
    pacer = CollectorPacer(period=0.01, middle_every=2)
    pacer.start()
    try:
        await eventually(lambda: pacer.collections >= 2, "two paced collections")
        assert len(gc.get_objects(0)) < HELD // 5
        assert len(gc.get_objects(1)) < HELD // 5  # the middle one's turn came too
    finally:
        await pacer.stop()
    stopped_at = pacer.collections
    await pacer.stop()  # stopping twice is harmless
    assert pacer.collections == stopped_at
