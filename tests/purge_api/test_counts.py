"""Match counts off the acknowledgement path: the ack does not wait, the count follows.

A node counts how many stored objects a purge covers by scanning its store's index,
which takes a while on a large store. The ack must not wait for that (the API's push
times out after 2 s); the count reaches the API later and the purge's status shows it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edge import node_admin
from edge.cache.keys import VARIANT_SEPARATOR
from edge.cache.model import ObjectMeta
from edge.cache.policy import build_meta
from edge.node import match_counter
from edge.store import DiskStore
from runtime.purge_wire import PurgeRecord
from tests.purge_api.harness import AUTH, Applied, Node, api_call, api_url, start_api, write_fleet
from tests.support.fleetfile import TEST_NODE_SECRET
from tests.support.processes import NodeProcess

OBJECTS = 300
STORED_AT = 1_000.0


def object_meta(target: str) -> ObjectMeta:
    """The metadata of a small object of the service at `target`, as a fill makes it."""
    return build_meta(
        status=200,
        upstream_pairs=(("Cache-Control", "max-age=600"),),
        request_time=STORED_AT,
        response_time=STORED_AT,
        stored_at=STORED_AT,
        service="site",
        host="www.example.com",
        target=target,
        compressible=False,
    )


async def fill(store: DiskStore, count: int) -> None:
    """`count` small objects of the service, as fills store them."""
    for n in range(count):
        target = f"/objects/{n}"
        writer = store.begin(f"site www.example.com{target}")
        await writer.write(b"x" * 64)
        await writer.commit(object_meta(target))


async def status_of(fleet: Any, purge_id: str) -> dict[str, Any]:
    status, report, _ = await api_call(
        "GET", f"{api_url(fleet)}/v1/purges/{purge_id}", headers=AUTH
    )
    assert status == 200, report
    assert isinstance(report, dict)
    return report


async def test_an_ack_does_not_wait_for_counting_and_the_count_follows(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=0, edges=1)
    start_api(fleet, tmp_path, processes)
    store = await DiskStore.open(str(tmp_path / "objects"), 256 * 1024 * 1024)
    await fill(store, OBJECTS)
    counting = match_counter(fleet, store)
    let_count = asyncio.Event()
    started = asyncio.Event()

    async def slow_count(record: PurgeRecord) -> int:
        # the real count over the real store, held until the test lets it go: as a
        # scan of a store far larger than this one would be
        started.set()
        await let_count.wait()
        return await counting(record)

    node = Node(fleet, "edge1", tmp_path, Applied(), count=slow_count)
    await node.start()
    try:
        # acknowledged well within the push timeout while the count is held
        status, body, _ = await api_call(
            "POST",
            f"{api_url(fleet)}/v1/services/site/purge?wait=1.5",
            headers=AUTH,
            json={"all": True},
        )
        assert status == 200 and body["status"] == "complete", body
        await asyncio.wait_for(started.wait(), 5)
        report = await status_of(fleet, body["id"])
        assert report["acks"]["edge1"]["matched"] is None  # not counted yet
        let_count.set()
        deadline = asyncio.get_running_loop().time() + 10
        while report["acks"]["edge1"]["matched"] is None:
            assert asyncio.get_running_loop().time() < deadline, report
            await asyncio.sleep(0.05)
            report = await status_of(fleet, body["id"])
        assert report["acks"]["edge1"]["matched"] == OBJECTS
    finally:
        await node.stop()
        await store.close()


async def test_a_count_report_needs_the_secret_a_known_node_and_a_bounded_body(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=0, edges=1)
    start_api(fleet, tmp_path, processes)
    url = f"{api_url(fleet)}/v1/nodes/edge1/matched"
    node_auth = {"Authorization": f"Bearer {TEST_NODE_SECRET}"}
    ok = {"matched": {"1": 3}}
    assert (await api_call("POST", url, json=ok))[0] == 401
    assert (await api_call("POST", url, headers=AUTH, json=ok))[0] == 401  # a CI token
    unknown = f"{api_url(fleet)}/v1/nodes/nobody/matched"
    assert (await api_call("POST", unknown, headers=node_auth, json=ok))[0] == 404
    bad: Any
    for bad in (
        {"matched": []},
        {"matched": {"x": 1}},
        {"matched": {"1": -1}},
        {"matched": {"1": True}},
        {"matched": {"0": 1}},
        {"matched": {"1": 2**63}},
        {"matched": {str(n): 1 for n in range(1, 1002)}},
        [1],
    ):
        status, answer, _ = await api_call("POST", url, headers=node_auth, json=bad)
        assert status == 400, (bad, answer)
        assert len(str(answer)) < 200
    status, answer, _ = await api_call(
        "POST", url, headers=node_auth, data=b"[" * 100_000 + b"]" * 100_000
    )
    assert status == 400
    status, answer, _ = await api_call("POST", url, headers=node_auth, json=ok)
    assert (status, answer) == (200, {"node": "edge1", "recorded": 1})


async def test_a_count_reads_a_bounded_page_of_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count looks at the first `MATCH_SCAN_LIMIT` rows, read as one page: it never
    lists every key of the store (10^6 of them took the gateway from the purges
    acknowledged after it)."""
    fleet = write_fleet(tmp_path, shields=0, edges=1)
    store = await DiskStore.open(str(tmp_path / "objects"), 256 * 1024 * 1024)
    try:
        await fill(store, 30)
        monkeypatch.setattr(node_admin, "MATCH_SCAN_LIMIT", 10)

        async def every_key() -> list[str]:
            raise AssertionError("the whole store listed for a count")

        monkeypatch.setattr(store, "keys", every_key)
        counting = match_counter(fleet, store)
        assert await counting(PurgeRecord(1, "all", "site", all=True)) == 10
        assert await counting(PurgeRecord(2, "tag", "site", tags=("none",))) == 0
    finally:
        await store.close()


async def test_a_count_by_url_reads_the_urls_keys_not_a_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge by URL is counted from the rows of its URLs' keys and their variants,
    found in the index's key order: what it costs follows what it matches, not the
    size of the store (a page of 20,000 rows read and decoded for each purge made
    purges over 10^6 objects take 2.6 times as long as over 10^3), and an object
    beyond the first page is counted."""
    fleet = write_fleet(tmp_path, shields=0, edges=1)
    store = await DiskStore.open(str(tmp_path / "objects"), 256 * 1024 * 1024)
    try:
        await fill(store, 30)
        variant = store.begin("site www.example.com/objects/25" + VARIANT_SEPARATOR + "[]")
        await variant.write(b"v")
        await variant.commit(object_meta("/objects/25"))
        monkeypatch.setattr(node_admin, "MATCH_SCAN_LIMIT", 10)

        async def no_page(after: int, limit: int) -> tuple[list[str], int]:
            raise AssertionError("a page of the store read for a count by URL")

        monkeypatch.setattr(store, "keys_page", no_page)
        counting = match_counter(fleet, store)
        by_path = PurgeRecord(1, "path", "site", urls=("/objects/25",))
        assert await counting(by_path) == 2  # the object and its variant
        absolute = PurgeRecord(2, "url", "site", urls=("http://www.example.com/objects/3",))
        assert await counting(absolute) == 1
        # "/objects/2" is a prefix of "/objects/25"'s key: not the same URL
        assert await counting(PurgeRecord(3, "short", "site", urls=("/objects/2",))) == 1
        stranger = PurgeRecord(4, "other", "site", urls=("http://elsewhere.test/objects/3",))
        assert await counting(stranger) == 0
    finally:
        await store.close()
