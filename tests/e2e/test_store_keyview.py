"""A real edge with two workers on one store directory: a key one worker stores
reaches the other's view of the index (`DiskStore._sync`), so every worker then
answers it from the store, and the other worker fetches it at most once more."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.fleetfile import FleetSpec
from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

HOST = "www.example.com"
BODY = bytes(range(256)) * 4


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    yield from running_origin()


async def test_every_worker_serves_what_one_stored(
    tmp_path: Path, origin: OriginServer, processes: list[NodeProcess]
) -> None:
    origin.route(
        "/k",
        headers={"Cache-Control": "max-age=3600", "Content-Type": "application/octet-stream"},
        body=BODY,
    )
    config = FleetSpec(tmp_path / "fleet", origins=[origin.url]).write()
    text = config.read_text()
    assert text.count("workers = 1") == 1  # the edge's table only
    config.write_text(text.replace("workers = 1", "workers = 2"))
    listen = re.findall(r'^listen = "([^"]+)"', text, re.M)[0]
    node = NodeProcess(
        ["edge", "--config", str(config), "--node", "edge1"], tmp_path / "edge.log"
    ).start()
    processes.append(node)
    node.wait_listening(listen)
    log = tmp_path / "edge.log"
    await eventually(lambda: "worker 1: serving" in log.read_text(), "the second worker", 60)

    # a connection per request: the kernel spreads them over both workers
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

        async def get() -> str:
            async with session.get(f"http://{listen}/k", headers={"Host": HOST}) as reply:
                assert reply.status == 200
                assert await reply.read() == BODY
                return reply.headers["Cache-Status"]

        assert "fwd=" in await get()

        async def every_answer_a_hit() -> bool:
            return all(["hit" in await get() for _ in range(12)])

        await eventually(every_answer_a_hit, "hits on every worker")
    # the other worker may have missed it once, within its sync interval
    assert 1 <= origin.count("/k") <= 2
