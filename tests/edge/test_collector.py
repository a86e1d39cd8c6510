"""The cyclic collector as a serving node sets it: start-up frozen, young
collections far apart (a cold miss allocates hundreds of short-lived containers)."""

from __future__ import annotations

import gc

from edge.node import YOUNG_GC_THRESHOLD, tune_collector


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
