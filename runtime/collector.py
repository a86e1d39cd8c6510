"""The cyclic collector as a serving process runs it: start-up frozen, and young
collections paced by the clock as well as by allocations.

CPython starts a young collection when allocations minus deallocations of tracked
objects pass a threshold. A cache whose memory tier is full replaces an old entry
with a new one on every fill: each new entry's objects (its metadata, its header
pairs, its body reference, the hot lane's route) join the young generation while an
old entry's are freed, so that difference stays flat and the young generation grows
unchecked. Under cold misses it reached 220,000 objects, and the collection that
finally came stopped the event loop for 130-140 ms (docs/benchmarks.md, "Collector
pauses"): every request in flight waited for it. Collecting the young generation
every `YOUNG_PERIOD` seconds bounds it by what a process keeps in that time, and
the middle one every `MIDDLE_EVERY` of those bounds what reaches it the same way.
Most of what a fill keeps are tuples of strings, which a young collection untracks
for good, so the work is the same as before, cut into pieces of a few ms.
"""

from __future__ import annotations

import asyncio
import gc

from runtime.tasks import cancel_and_wait

__all__ = [
    "MIDDLE_EVERY",
    "YOUNG_GC_THRESHOLD",
    "YOUNG_PERIOD",
    "CollectorPacer",
    "tune_collector",
]

#: allocations between young collections (CPython's default is 700): see tune_collector
YOUNG_GC_THRESHOLD = 20_000
#: seconds between young collections made by the clock
YOUNG_PERIOD = 0.05
#: of those, every this many also collects the middle generation
MIDDLE_EVERY = 4


def tune_collector() -> None:
    """Set the cyclic collector up for serving, once start-up is done.

    What start-up made lives as long as the process: frozen out of the collector's
    way, so the objects of requests in flight (the access log's batch among them)
    do not make each full collection walk it all again. A miss allocates hundreds of
    containers (tasks, futures, header tables) that die young: at CPython's default
    of a young collection every 700 allocations, a profile of cold misses spent 19%
    of the event loop in the collector; 20,000 took about 15% off the CPU time of a
    miss (docs/benchmarks.md, "Cold misses").
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


class CollectorPacer:
    """Collects the young generation every `period` seconds while it runs, and the
    middle one every `middle_every` of those (see the module's docstring)."""

    def __init__(self, period: float = YOUNG_PERIOD, middle_every: int = MIDDLE_EVERY) -> None:
        self.period = period
        self.middle_every = middle_every
        #: collections made so far (tests wait on it)
        self.collections = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start pacing on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop pacing; the collector's own thresholds go on as before."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.collections += 1
            gc.collect(1 if self.collections % self.middle_every == 0 else 0)
