"""A fill that knows its body's length arms no flush timer once the body is in: the
commit follows at once, and a timer per small miss (made, then cancelled) was 3% of
the event loop under cold misses. Without a known length the timer still bounds how
long bytes wait in the buffer for readers tailing the file."""

from __future__ import annotations

import os
from pathlib import Path

from edge.store import DiskStore

KiB = 1024


async def test_a_body_of_its_announced_length_is_committed_without_a_timer(
    tmp_path: Path,
) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=64 * 1024 * KiB)
    try:
        body = os.urandom(KiB)
        writer = store.begin("k")
        writer.expected = len(body)
        await writer.write(body)
        assert writer._timer is None
        entry = await writer.commit("meta")
        assert store.commits_in_place == 1
        ref = entry.bodies["identity"]
        assert ref.path is None and ref.data == body  # kept in its index row

        unknown = store.begin("u")  # no announced length: the timer bounds the wait
        await unknown.write(body)
        assert unknown._timer is not None
        await unknown.commit("meta")
        assert unknown._timer is None
    finally:
        await store.close()
