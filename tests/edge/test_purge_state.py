"""The node's saved purge state after a crash in the middle of an append."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cache.purge import PurgeRecord
from edge.purge_sync import PurgeStateFile
from tests.purge_api.harness import Applied, Node, api_call, write_fleet
from tests.support.fleetfile import TEST_NODE_SECRET
from tests.support.purge_fleet import NODE_AUTH


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


async def test_pushes_wait_until_the_saved_rules_are_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before start() has restored the node's rules its applied_seq reads 0: a push
    from seq 1 must not be applied then (old purges would be applied again as new)."""
    monkeypatch.setenv("EDGESHIELD_NODE_SECRET", TEST_NODE_SECRET)
    fleet = write_fleet(tmp_path, shields=0, edges=1)
    node = Node(fleet, "edge1", tmp_path, Applied(), listen="127.0.0.1:0")
    await node.start(sync=False)
    try:
        status, body, _ = await api_call(
            "POST",
            f"{node.url}/admin/purge",
            headers=NODE_AUTH,
            json={"records": [record(1).to_json()]},
        )
        assert status == 503, body
        assert node.rules.applied_seq == 0
    finally:
        await node.stop()
