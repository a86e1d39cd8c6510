"""Fan-out to real node intakes: shields before edges, acks, catch-up, gaps, durability."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge.cache.keys import normalize_target
from edge.cache.purge import PurgeRecord, PurgeVerdict
from tests.purge_api.harness import (
    AUTH,
    Applied,
    Node,
    api_call,
    api_url,
    start_api,
    start_nodes,
    write_fleet,
)
from tests.support.fleetfile import TEST_NODE_SECRET
from tests.support.processes import NodeProcess

NODE_AUTH = {"Authorization": f"Bearer {TEST_NODE_SECRET}"}


def target(path: str) -> str:
    return normalize_target(path, True, ("utm_*", "gclid", "fbclid"))


async def post(
    api: str, payload: dict[str, object], wait: float = 0, key: str = ""
) -> tuple[int, dict[str, object], dict[str, str]]:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    return await api_call(
        "POST", f"{api}/v1/services/site/purge?wait={wait}", headers=headers, json=payload
    )


async def test_shields_apply_before_edges_and_wait_reports_complete(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=2, edges=3)
    start_api(fleet, tmp_path, processes)
    applied = Applied()
    nodes = await start_nodes(fleet, tmp_path, applied)
    try:
        for n in range(1, 4):
            status, body, _ = await post(api_url(fleet), {"tags": [f"t{n}"]}, wait=10)
            assert status == 200
            assert body["status"] == "complete"
            assert set(body["nodes"]) == {"shield1", "shield2", "edge1", "edge2", "edge3"}
            assert all(isinstance(ms, float) for ms in body["nodes"].values())
            last_shield = max(applied.when(s, n) for s in ("shield1", "shield2"))
            first_edge = min(applied.when(e, n) for e in ("edge1", "edge2", "edge3"))
            assert last_shield < first_edge
        for node in nodes:
            assert applied.seqs(node.name) == [1, 2, 3]
            assert node.rules.applied_seq == 3
            assert node.rules.verdict("site", "www.example.com", "/x", ("t2",), 0.0) is (
                PurgeVerdict.GONE
            )
        status, report, _ = await api_call(
            "GET", f"{api_url(fleet)}/v1/purges/{body['id']}", headers=AUTH
        )
        assert status == 200
        assert report["status"] == "complete"
        assert (report["acked"], report["total"], report["pending"]) == (5, 5, [])
        # the count follows the ack, counted off the ack path
        deadline = asyncio.get_running_loop().time() + 10
        while report["acks"]["edge2"]["matched"] is None:
            assert asyncio.get_running_loop().time() < deadline, report
            await asyncio.sleep(0.05)
            _, report, _ = await api_call(
                "GET", f"{api_url(fleet)}/v1/purges/{body['id']}", headers=AUTH
            )
        assert report["acks"]["edge2"]["matched"] == len("edge2")
        assert report["propagation_ms"] == max(report["nodes"].values())
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_a_down_shield_does_not_hold_edges_back_and_catches_up_on_start(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=2, edges=1)
    start_api(fleet, tmp_path, processes)
    applied = Applied()
    nodes = await start_nodes(fleet, tmp_path, applied, ["shield1", "edge1"])
    try:
        status, body, _ = await post(api_url(fleet), {"urls": ["/a"]}, wait=1)
        assert status == 202
        assert body["status"] == "pending"
        assert body["pending"] == ["shield2"]
        assert applied.seqs("edge1") == [1]
        shield2 = Node(fleet, "shield2", tmp_path, applied)
        nodes.append(shield2)
        await shield2.start()
        # start() returned: the catch-up happened before the node may serve
        assert shield2.sync.ready
        assert shield2.rules.applied_seq == 1
        assert shield2.rules.verdict("site", "www.example.com", target("/a"), (), 0.0) is (
            PurgeVerdict.GONE
        )
        status, report, _ = await api_call(
            "GET", f"{api_url(fleet)}/v1/purges/{body['id']}?wait=10", headers=AUTH
        )
        assert (status, report["status"]) == (200, "complete")
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_edge_that_was_down_catches_up_and_keeps_rules_across_restart(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=1, edges=2)
    start_api(fleet, tmp_path, processes)
    applied = Applied()
    nodes = await start_nodes(fleet, tmp_path, applied)
    edge2 = next(node for node in nodes if node.name == "edge2")
    try:
        await post(api_url(fleet), {"prefixes": ["/img/"]}, wait=10)
        first_applied_at = applied.when("edge2", 1)
        await edge2.stop()
        nodes.remove(edge2)
        status, body, _ = await post(api_url(fleet), {"urls": ["/b"], "soft": True}, wait=0.5)
        assert (status, body["pending"]) == (202, ["edge2"])

        again = Node(fleet, "edge2", tmp_path, applied)
        nodes.append(again)
        await again.start()
        assert again.rules.applied_seq == 2
        assert applied.seqs("edge2") == [1, 2]  # only the missed purge was pulled
        # the restored prefix rule keeps its first applied_at: an object fetched after
        # it (but before the restart) is not purged again
        verdict = again.rules.verdict
        assert verdict("site", "www.example.com", "/img/a", (), 0.0) is PurgeVerdict.GONE
        assert verdict("site", "www.example.com", "/img/a", (), 1e12) is PurgeVerdict.NONE
        assert first_applied_at > 0
        assert verdict("site", "www.example.com", target("/b"), (), 0.0) is PurgeVerdict.STALE
        status, report, _ = await api_call(
            "GET", f"{api_url(fleet)}/v1/purges/{body['id']}?wait=10", headers=AUTH
        )
        assert report["status"] == "complete"
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_a_push_after_a_gap_pulls_the_missing_purges_first(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=0, edges=1)
    start_api(fleet, tmp_path, processes)
    applied = Applied()
    # the node listens somewhere the API does not push to, so only this test pushes
    node = Node(fleet, "edge1", tmp_path, applied, listen="127.0.0.1:0")
    await node.start()
    try:
        ids = []
        for n in range(3):
            _, body, _ = await post(api_url(fleet), {"tags": [f"t{n}"]})
            ids.append(body["id"])
        third = PurgeRecord(3, ids[2], "site", tags=("t2",))
        status, answer, _ = await api_call(
            "POST",
            f"{node.url}/admin/purge",
            headers=NODE_AUTH,
            json={"records": [third.to_json()]},
        )
        assert status == 200
        assert answer["applied_seq"] == 3
        # the count follows the ack: in it if ready, else null
        assert answer["matched"] in ({"3": None}, {"3": len("edge1")})
        assert applied.seqs("edge1") == [1, 2, 3]
        # pushed again: idempotent, and the ack carries the count once it is ready
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            status, answer, _ = await api_call(
                "POST",
                f"{node.url}/admin/purge",
                headers=NODE_AUTH,
                json={"records": [third.to_json()]},
            )
            assert (status, answer["applied_seq"]) == (200, 3)
            if answer["matched"] == {"3": len("edge1")}:
                break
            assert asyncio.get_running_loop().time() < deadline, answer
            await asyncio.sleep(0.05)
        assert applied.seqs("edge1") == [1, 2, 3]
    finally:
        await node.stop()


async def test_node_unreachable_api_at_start_marks_everything_stale(tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path, shields=0, edges=1)  # the API is not started
    now = [1000.0]
    node = Node(
        fleet,
        "edge1",
        tmp_path,
        Applied(),
        listen="127.0.0.1:0",
        startup_retry=0.3,
        clock=lambda: now[0],
    )
    await node.start()
    try:
        assert node.sync.ready
        assert not node.sync.caught_up
        verdict = node.rules.verdict
        assert verdict("site", "www.example.com", "/a", (), 999.0) is PurgeVerdict.STALE
        assert verdict("site", "www.example.com", "/a", (), 1000.5) is PurgeVerdict.NONE
        # a push beyond what it has, with no API to fill the gap: refused, nothing applied
        record = PurgeRecord(2, "x", "site", all=True)
        status, answer, _ = await api_call(
            "POST",
            f"{node.url}/admin/purge",
            headers=NODE_AUTH,
            json={"records": [record.to_json()]},
        )
        assert status == 409
        assert answer["applied_seq"] == 0
        assert "missing purges after seq 0" in answer["error"]
        status, answer, _ = await api_call(
            "POST",
            f"{node.url}/admin/purge",
            headers=NODE_AUTH,
            json={
                "records": [PurgeRecord(1, "y", "site", urls=("/a",)).to_json(), record.to_json()]
            },
        )
        assert (status, answer["applied_seq"]) == (200, 2)
    finally:
        await node.stop()


async def test_node_intake_refuses_pushes_without_the_secret(tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path, shields=0, edges=1)
    node = Node(fleet, "edge1", tmp_path, Applied(), listen="127.0.0.1:0")
    await node.start(sync=False)
    try:
        record = PurgeRecord(1, "x", "site", all=True).to_json()
        for headers in ({}, {"Authorization": "Bearer wrong"}, AUTH):
            status, body, _ = await api_call(
                "POST", f"{node.url}/admin/purge", headers=headers, json={"records": [record]}
            )
            assert (status, body["error"]) == (401, "missing or wrong node secret")
        status, body, _ = await api_call(
            "POST", f"{node.url}/admin/purge", headers=NODE_AUTH, json={"records": "x"}
        )
        assert status == 400
        assert node.rules.applied_seq == 0
    finally:
        await node.stop()


async def test_without_a_purge_api_the_node_is_ready_at_once(tmp_path: Path) -> None:
    from edge.cache.purge import PurgeRules
    from edge.purge_sync import PurgeSync
    from fleet.config import parse_fleet

    text = Path(write_fleet(tmp_path, shields=0, edges=1).source).read_text()
    fleet = parse_fleet(text.split("[purge_api]")[0])
    sync = PurgeSync(fleet, "edge1", PurgeRules(fleet.services), str(tmp_path / "s"))
    assert sync.ready
    await sync.start()
    assert sync.ready
    await sync.stop()


async def test_purge_survives_sigkill_after_202_and_idempotency_holds(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=1, edges=2)
    api = start_api(fleet, tmp_path, processes)
    url = api_url(fleet)
    status, first, _ = await post(url, {"urls": ["/gone"]}, key="deploy-42")
    assert (status, first["status"]) == (202, "pending")
    api.kill()  # right after the 202: no node has heard of it

    start_api(fleet, tmp_path, processes)
    status, replay, headers = await post(url, {"urls": ["/gone"]}, key="deploy-42")
    assert (status, replay["id"], replay["seq"]) == (202, first["id"], first["seq"])
    assert headers["Idempotent-Replayed"] == "true"
    status, other, _ = await post(url, {"urls": ["/gone"]}, key="deploy-43")
    assert other["seq"] == first["seq"] + 1

    applied = Applied()
    nodes = await start_nodes(fleet, tmp_path, applied)
    try:
        status, report, _ = await api_call(
            "GET", f"{url}/v1/purges/{first['id']}?wait=10", headers=AUTH
        )
        assert (status, report["status"], report["acked"]) == (200, "complete", 3)
        for node in nodes:
            assert node.rules.verdict("site", "www.example.com", "/gone", (), 0.0) is (
                PurgeVerdict.GONE
            )
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_pull_gives_a_node_what_it_missed_and_refuses_unknown_nodes(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=1, edges=1)
    start_api(fleet, tmp_path, processes)
    url = api_url(fleet)
    await post(url, {"tags": ["t"]})
    status, shield_view, _ = await api_call(
        "GET", f"{url}/v1/nodes/shield1/purges?since=0", headers=NODE_AUTH
    )
    assert status == 200
    assert [r["seq"] for r in shield_view["records"]] == [1]
    assert (shield_view["head"], shield_view["more"]) == (1, False)
    status, body, _ = await api_call(
        "GET", f"{url}/v1/nodes/nope/purges?since=0", headers=NODE_AUTH
    )
    assert (status, body["error"]) == (404, "no node named 'nope' in the fleet")
