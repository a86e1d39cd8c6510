"""The API's push and a node's intake agree on a purge record, over real HTTP."""

from __future__ import annotations

from pathlib import Path

from edge.purge_sync import PurgeStateFile
from runtime.purge_wire import PurgeRecord, PurgeRequest
from tests.purge_api.harness import (
    AUTH,
    Applied,
    api_call,
    api_url,
    start_api,
    start_nodes,
    write_fleet,
)
from tests.support.processes import NodeProcess


async def test_the_record_a_node_saves_is_the_purge_the_api_accepted(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=1, edges=1)
    start_api(fleet, tmp_path, processes)
    nodes = await start_nodes(fleet, tmp_path, Applied())
    asked = PurgeRequest(
        urls=("https://www.example.com/a?b=1", "/ü"),
        prefixes=("/p/",),
        tags=("t1", "t-2"),
        soft=True,
    )
    try:
        status, body, _ = await api_call(
            "POST",
            f"{api_url(fleet)}/v1/services/site/purge?wait=10",
            headers=AUTH,
            json=asked.to_json(),
        )
        assert status == 200, body
        _, report, _ = await api_call(
            "GET", f"{api_url(fleet)}/v1/purges/{body['id']}", headers=AUTH
        )
        assert PurgeRequest.from_json(report["request"]) == asked
        for node in nodes:
            _, saved = PurgeStateFile(str(node.state_dir)).load()
            ((record, _),) = saved
            assert record == PurgeRecord.of(
                body["seq"], body["id"], "site", asked, report["accepted_at"]
            )
    finally:
        for node in nodes:
            await node.stop()
