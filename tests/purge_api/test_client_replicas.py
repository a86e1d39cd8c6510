"""`edgeshield purge --api A,B`: a replica that does not answer is passed for the next."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.purge_api.harness import Applied, api_url, start_api, start_nodes, write_fleet
from tests.purge_api.test_client import purge_cli
from tests.support.ports import free_port
from tests.support.processes import NodeProcess


async def test_purge_goes_to_the_next_replica_when_the_first_is_down(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=1, edges=1)
    start_api(fleet, tmp_path, processes)
    nodes = await start_nodes(fleet, tmp_path, Applied())
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        code, out, err = await purge_cli(
            "--api", f"{down},{api_url(fleet)}", "--service", "site", "--url", "/a", "--wait", "20"
        )
        assert code == 0, err
        assert "complete: all 2 nodes acknowledged" in out
        assert all(node.rules.applied_seq == 1 for node in nodes)
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_purge_with_no_api_address_is_bad_input() -> None:
    code, _, err = await purge_cli("--api", " , ", "--service", "site", "--url", "/a")
    assert code == 2
    assert "--api" in err
