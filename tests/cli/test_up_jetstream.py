"""`edgeshield up` for a fleet whose purge log is JetStream: it runs the nats-server too.

A fleet file with two purge API replicas (`[purge_api] listen` a list) and one local
NATS server: `up` starts nats-server before the replicas, each replica answers for
the other's purges, and every process `up` started (nats-server included) is gone
after SIGINT.
"""

from __future__ import annotations

import hashlib
import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from cli.nats import nats_specs
from fleet.config import load_fleet
from tests.cli.test_up import UpProcess, alive
from tests.support.fleetfile import TEST_TOKEN
from tests.support.nats_cluster import nats_server_binary
from tests.support.ports import free_port


@pytest.fixture
def up_processes() -> Iterator[list[UpProcess]]:
    started: list[UpProcess] = []
    yield started
    for up in started:
        up.cleanup()


def _fleet_file(tmp_path: Path, nats_ports: list[int]) -> tuple[Path, list[str]]:
    replicas = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    digest = hashlib.sha256(TEST_TOKEN.encode()).hexdigest()
    servers = ", ".join(f'"nats://127.0.0.1:{port}"' for port in nats_ports)
    config = tmp_path / "fleet.toml"
    config.write_text(
        '[[regions]]\nname = "eu"\nlatitude = 50.1\nlongitude = 8.7\n\n'
        '[[services]]\nname = "site"\nhosts = ["www.example.com"]\n'
        'origins = ["http://127.0.0.1:9"]\n\n'
        f"[purge_api]\nlisten = [{', '.join(json.dumps(r) for r in replicas)}]\n"
        f'data_dir = "{tmp_path / "api"}"\nlog = "jetstream"\n'
        f'tokens = [{{ name = "ci", sha256 = "{digest}", services = ["site"] }}]\n\n'
        f"[nats]\nservers = [{servers}]\n",
        encoding="utf-8",
    )
    return config, replicas


def _call(url: str, data: bytes | None = None) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=data, headers={"Authorization": f"Bearer {TEST_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def test_up_starts_nats_server_and_both_replicas_of_a_jetstream_fleet(
    tmp_path: Path, up_processes: list[UpProcess]
) -> None:
    nats_server_binary()  # a clear failure when it is not installed
    nats_port = free_port()
    config, replicas = _fleet_file(tmp_path, [nats_port])
    up = UpProcess("--config", str(config), "--state-dir", str(tmp_path / "state"))
    up_processes.append(up)
    up.wait_for(lambda line: line == "edgeshield: ready")
    up.wait_for(lambda line: line.startswith("Ctrl-C"))
    assert up.pids_of("nats") and up.pids_of("purge-api") and up.pids_of("purge-api-2")
    assert any(f"nats://127.0.0.1:{nats_port}" in line for line in up.lines)
    first = _call(f"http://{replicas[1]}/v1/services/site/purge", b'{"urls": ["/a"]}')
    seen = _call(f"http://{replicas[0]}/v1/purges/{first['id']}")
    assert (seen["id"], seen["seq"]) == (first["id"], first["seq"])
    assert (tmp_path / "api" / "nats" / "nats").is_dir()  # the store, under data_dir
    pids = up.pids()
    up.proc.send_signal(signal.SIGINT)
    assert up.finish() == 0
    assert [pid for pid in pids if alive(pid)] == []


def test_a_local_cluster_gets_one_server_per_address_routed_to_the_others(
    tmp_path: Path,
) -> None:
    nats_server_binary()
    ports = [free_port() for _ in range(3)]
    config, _ = _fleet_file(tmp_path, ports)
    specs = nats_specs(load_fleet(config))
    assert [spec.name for spec in specs] == ["nats1", "nats2", "nats3"]
    first = specs[0].argv
    assert first[first.index("-p") + 1] == str(ports[0])
    routes = first[first.index("--routes") + 1].split(",")
    assert routes == [f"nats-route://127.0.0.1:{p + 2000}" for p in ports[1:]]
    assert all(spec.stage == 0 for spec in specs)


def test_a_fleet_on_sqlite_or_remote_nats_starts_no_nats_server(tmp_path: Path) -> None:
    config, _ = _fleet_file(tmp_path, [4222])
    remote = config.read_text(encoding="utf-8").replace("127.0.0.1:4222", "10.0.0.5:4222")
    config.write_text(remote, encoding="utf-8")
    assert nats_specs(load_fleet(config)) == []


def test_purge_api_refuses_a_listen_address_that_is_not_host_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = _fleet_file(tmp_path, [4222])
    assert main(["purge-api", "--config", str(config), "--listen", "nowhere"]) == 2
    assert "--listen" in capsys.readouterr().err
