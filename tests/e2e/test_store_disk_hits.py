"""Disk hits of a real edge whose memory tier holds nothing (every hit is read
from disk, on the event loop since `edge.store.disk_inline`): served whole, and a
purged object is never served from its file afterwards (purge rules apply at
lookup to whatever the store returns)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.fleetfile import TEST_NODE_SECRET, FleetSpec
from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

HOST = "www.example.com"
BODY = bytes(range(256)) * 8


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    yield from running_origin()


async def test_a_purged_object_is_not_served_from_disk(
    tmp_path: Path, origin: OriginServer, processes: list[NodeProcess]
) -> None:
    origin.route(
        "/d",
        headers={"Cache-Control": "max-age=3600", "Content-Type": "application/octet-stream"},
        body=BODY,
    )
    spec = FleetSpec(tmp_path / "fleet", origins=[origin.url])
    config = spec.write()
    # a tier too small for any entry: every hit reads the index and the body file
    text = config.read_text().replace(
        'cache_size = "256MiB"', 'cache_size = "256MiB"\nmemory_size = "1KiB"\nscrub_rate = 0'
    )
    config.write_text(text)
    listen = re.findall(r'^listen = "([^"]+)"', text, re.M)[0]
    admin = re.findall(r'^admin_listen = "([^"]+)"', text, re.M)[0]
    node = NodeProcess(
        ["edge", "--config", str(config), "--node", "edge1"], tmp_path / "edge.log"
    ).start()
    processes.append(node)
    node.wait_listening(listen)

    async with aiohttp.ClientSession() as session:

        async def get(path: str) -> tuple[str, bytes]:
            async with session.get(f"http://{listen}{path}", headers={"Host": HOST}) as r:
                assert r.status == 200
                return r.headers["Cache-Status"], await r.read()

        status, body = await get("/d?v=1")
        assert "fwd=" in status and body == BODY

        async def stored() -> bool:  # the commit lands after the answer
            return "hit" in (await get("/d?v=1"))[0]

        await eventually(stored)
        for _ in range(5):  # hits from disk, whole
            status, body = await get("/d?v=1")
            assert "hit" in status and body == BODY
        fetched = origin.count("/d?v=1")

        record = {"seq": 1, "id": "t-1", "service": "site", "urls": [f"http://{HOST}/d?v=1"]}
        async with session.post(
            f"http://{admin}/admin/purge",
            data=json.dumps({"records": [record]}),
            headers={
                "Authorization": f"Bearer {TEST_NODE_SECRET}",
                "Content-Type": "application/json",
            },
        ) as reply:
            assert reply.status == 200
            assert (await reply.json())["applied_seq"] == 1

        # the body file is still on disk: the rule, not the file, decides
        status, body = await get("/d?v=1")
        assert "hit" not in status and body == BODY
        assert origin.count("/d?v=1") == fetched + 1
