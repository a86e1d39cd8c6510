"""Edge health: the monitor against real sockets, and GeoDNS with real edge processes."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from dnslib import EDNS0, DNSRecord, EDNSOption

from fleet.config import EdgeConfig, load_fleet, split_host_port
from geo.health import HealthMonitor, check_timeout
from tests.geo.test_service import PUBLIC, fleet_text
from tests.support.fleetfile import TEST_NODE_SECRET
from tests.support.ports import free_port
from tests.support.processes import NodeProcess


def edge(name: str, admin_port: int) -> EdgeConfig:
    return EdgeConfig(
        name=name,
        region="eu",
        listen=f"127.0.0.1:{free_port()}",
        admin_listen=f"127.0.0.1:{admin_port}",
        cache_dir="/nonexistent",
        cache_size=16 * 1024**2,
        public_address="127.0.1.1",
    )


def test_timeout_stays_within_the_three_second_budget() -> None:
    assert check_timeout(1.0) == 1.0
    assert check_timeout(0.1) == 0.25
    assert check_timeout(30.0) == 1.0


async def test_edges_count_as_healthy_until_checked_then_down_when_refused() -> None:
    changes: list[frozenset[str]] = []
    edges = [edge("a", free_port()), edge("b", free_port())]
    async with HealthMonitor(edges, "secret", interval=0.5) as monitor:
        monitor.on_change = lambda: changes.append(monitor.healthy)
        assert monitor.healthy == {"a", "b"}
        assert not monitor.states["a"].checked
        await monitor.poll_once()
        assert monitor.healthy == frozenset()
        assert changes == [frozenset()]
        assert monitor.states["a"].checked
        assert "unreachable" in monitor.states["a"].detail


async def test_an_edge_that_accepts_but_never_answers_is_down() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections in the kernel, never reads or writes
        port = silent.getsockname()[1]
        async with HealthMonitor([edge("mute", port)], "secret", interval=0.25) as monitor:
            await monitor.poll_once()
        assert monitor.healthy == frozenset()
        assert "no answer within 0.25s" in monitor.states["mute"].detail


def ecs_answer(port: int, subnet: bytes) -> str:
    record = DNSRecord.question("site.cdn.test")
    option = EDNSOption(8, struct.pack("!HBB", 1, 24, 0) + subnet)
    record.add_ar(EDNS0(udp_len=1232, opts=[option]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(bytes(record.pack()), ("127.0.0.1", port))
        return str(DNSRecord.parse(sock.recv(4096)).rr[0].rdata)


def wait_for_answer(port: int, subnet: bytes, expected: str, geo: NodeProcess) -> float:
    """Seconds until the answer for `subnet` is `expected` (at most 10)."""
    started = time.monotonic()
    while ecs_answer(port, subnet) != expected:
        assert time.monotonic() - started < 10, geo.log()
        time.sleep(0.05)
    return time.monotonic() - started


def test_failed_edge_leaves_answers_and_returns_after_recovery(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_text(tmp_path), encoding="utf-8")
    fleet = load_fleet(path)
    assert fleet.geo is not None
    edges = {}
    for config in fleet.edges:
        node = NodeProcess(
            ["edge", "--config", str(path), "--node", config.name],
            tmp_path / f"{config.name}.log",
            env={fleet.security.node_secret_env: TEST_NODE_SECRET},
        ).start()
        processes.append(node)
        edges[config.name] = node
    for config in fleet.edges:
        edges[config.name].wait_listening(config.admin_listen)
    geo = NodeProcess(["geo", "serve", "--config", str(path)], tmp_path / "geo.log").start()
    processes.append(geo)
    geo.wait_listening(fleet.geo.http_listen)
    port = split_host_port(fleet.geo.dns_listen)[1]
    eu_client = bytes([10, 1, 7])

    wait_for_answer(port, eu_client, PUBLIC["eu"], geo)
    edges["edge-eu"].kill()
    # Frankfurt to New York is 6,200 km, to Tokyo 9,300: us is next nearest.
    wait_for_answer(port, eu_client, PUBLIC["us"], geo)  # how fast: bench/geodns.py
    assert ecs_answer(port, bytes([10, 3, 7])) == PUBLIC["ap"]

    restarted = NodeProcess(
        ["edge", "--config", str(path), "--node", "edge-eu"], tmp_path / "edge-eu-2.log"
    ).start()
    processes.append(restarted)
    restarted.wait_listening(fleet.edge("edge-eu").admin_listen)
    wait_for_answer(port, eu_client, PUBLIC["eu"], geo)
