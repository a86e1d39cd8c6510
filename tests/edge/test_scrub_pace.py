"""The scrubber's pace over a store of small objects: each object is charged at least
`SCRUB_OBJECT_MIN` bytes against `scrub_rate`, so a pass over many 1 KiB objects is not
thousands of checks a second, and a damaged one among them is still found."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edge.scrub import scrub_once
from edge.store import DiskStore
from edge.store.disk import SCRUB_OBJECT_MIN as OBJECT_FLOOR

KiB = 1024
OBJECTS = 40


async def test_a_pass_over_small_objects_keeps_to_a_per_object_floor(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=64 * 1024 * KiB, row_body_max=0)
    try:
        paths = {}
        for n in range(OBJECTS):
            writer = store.begin(f"k{n}")
            await writer.write(os.urandom(KiB))
            entry = await writer.commit("meta")
            paths[f"k{n}"] = entry.bodies["identity"].path
        damaged = paths["k17"]
        assert damaged is not None
        with open(damaged, "r+b") as f:
            f.seek(KiB // 2)
            f.write(b"\xff" * 8)
        store.forget_cached("k17")
        # a pass charged only the bytes would take OBJECTS KiB / rate = 0.03 s
        rate = OBJECTS * OBJECT_FLOOR  # so a whole pass is charged at least 1 s
        started = time.monotonic()
        read = await scrub_once(store, rate)
        elapsed = time.monotonic() - started
        assert read == OBJECTS * KiB
        assert elapsed >= 0.9, f"{OBJECTS} objects scrubbed in {elapsed:.2f} s"
        assert store.corrupt_found == 1
        assert await store.get("k17") is None
        assert await store.get("k16") is not None
    finally:
        await store.close()
