"""The node's saved purge state after a crash in the middle of an append."""

from __future__ import annotations

from pathlib import Path

from edge.cache.purge import PurgeRecord
from edge.purge_sync import PurgeStateFile


def record(seq: int) -> PurgeRecord:
    return PurgeRecord(seq, f"p{seq}", "site", urls=(f"/{seq}",))


def test_a_line_cut_short_by_a_crash_does_not_swallow_the_next_append(tmp_path: Path) -> None:
    state = PurgeStateFile(str(tmp_path))
    state.append([(record(1), 10.0), (record(2), 11.0)], 2)
    # killed while writing seq 3's line: part of it reached the file, not the seq
    with open(state.rules_path, "a", encoding="utf-8") as handle:
        handle.write('{"record":{"seq":3,"id":"p3","serv')
    applied_seq, entries = state.load()
    assert applied_seq == 2
    assert [r.seq for r, _ in entries] == [1, 2]
    # the catch-up brings seq 3 back; it must survive the next restart
    state.append([(record(3), 12.0)], 3)
    applied_seq, entries = state.load()
    assert applied_seq == 3
    assert [r.seq for r, _ in entries] == [1, 2, 3]
