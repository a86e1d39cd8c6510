"""`edgeshield purge` as CI runs it: a real process against the real API and nodes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.purge_api.harness import Applied, api_url, start_api, start_nodes, write_fleet
from tests.support.fleetfile import TEST_TOKEN
from tests.support.processes import NodeProcess


async def purge_cli(*args: str, token: str = TEST_TOKEN) -> tuple[int, str, str]:
    """Run `edgeshield purge ARGS` without blocking this loop (the nodes live in it)."""
    env = {**os.environ, "EDGESHIELD_TOKEN": token}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "purge",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_purge_waits_until_complete_and_prints_progress(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=1, edges=2)
    start_api(fleet, tmp_path, processes)
    nodes = await start_nodes(fleet, tmp_path, Applied())
    try:
        code, out, err = await purge_cli(
            "--api",
            api_url(fleet),
            "--service",
            "site",
            "--tag",
            "product-1",
            "--url",
            "/a",
            "--wait",
            "20",
        )
        assert code == 0, err
        assert "accepted" in out
        assert "complete: all 3 nodes acknowledged; propagation" in out
        assert all(node.rules.applied_seq == 1 for node in nodes)
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_purge_names_the_nodes_that_did_not_acknowledge_when_the_wait_runs_out(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=0, edges=2)
    start_api(fleet, tmp_path, processes)
    nodes = await start_nodes(fleet, tmp_path, Applied(), ["edge1"])
    try:
        code, out, err = await purge_cli(
            "--api",
            api_url(fleet),
            "--service",
            "site",
            "--all",
            "--soft",
            "--wait",
            "1",
        )
        assert code == 4
        assert "soft purge" in out
        assert "the wait ran out after 1s: 1/2 nodes acked; not acknowledged: edge2" in err
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def test_purge_reports_refused_tokens_and_bad_input(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    fleet = write_fleet(tmp_path, shields=0, edges=0)
    start_api(fleet, tmp_path, processes)
    api = api_url(fleet)
    code, _, err = await purge_cli("--api", api, "--service", "site", "--all", token="bad")
    assert code == 3
    assert "refused (401): missing or unknown token" in err
    code, _, err = await purge_cli("--api", api, "--service", "site")
    assert code == 2
    assert "nothing to purge" in err
    code, _, err = await purge_cli("--api", api, "--service", "site", "--url", "https://x.test/a")
    assert code == 2
    assert "bad request (400): urls[0]: host 'x.test' is not a host of service 'site'" in err
    code, _, err = await purge_cli("--api", api, "--service", "nope", "--all")
    assert code == 2
    assert "no service named 'nope'" in err
    code, out, _ = await purge_cli("--api", api, "--service", "site", "--all")
    assert code == 0
    assert "complete: all 0 nodes acknowledged" in out
