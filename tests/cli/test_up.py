"""`edgeshield up` as a real process, and its supervisor with real child processes."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, DNSRecord, EDNSOption

from cli.demo import DEMO_HOST, DEMO_SERVICE, DEMO_ZONE
from cli.plan import HealthCheck, NodeSpec
from cli.supervisor import Supervisor
from fleet.config import load_fleet
from tests.support.ports import free_port

UP_TIMEOUT = 90.0


def alive(pid: int) -> bool:
    """Whether a process with this PID exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return status != "Z"


class UpProcess:
    """`python -m cli.main up ...` with its output collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._queue.put(raw.decode(errors="replace").rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = UP_TIMEOUT) -> str:
        """The first new line for which `wanted` is true; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"no such line after {timeout}s; output:\n" + self.output())
            if line is None:
                pytest.fail("`up` exited early; output:\n" + self.output())
            self.lines.append(line)
            if wanted(line):
                return line

    def output(self) -> str:
        return "\n".join(self.lines)

    def pids(self) -> list[int]:
        """Every PID `up` said it started."""
        return [
            int(line.rsplit(" ", 1)[1])
            for line in self.lines
            if line.startswith("edgeshield: started ")
        ]

    def pids_of(self, node: str) -> list[int]:
        """The PIDs `up` said node `node` had."""
        prefix = f"edgeshield: started {node} pid "
        return [int(line[len(prefix) :]) for line in self.lines if line.startswith(prefix)]

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for exit, collecting the rest of the output; returns the status."""
        status = self.proc.wait(timeout)
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return status

    def cleanup(self) -> None:
        """Whatever happened in the test, nothing it started is left running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.pids():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def up_processes() -> Iterator[list[UpProcess]]:
    started: list[UpProcess] = []
    yield started
    for up in started:
        up.cleanup()


def http_get(url: str, host: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def ecs_query(name: str, network: str) -> DNSRecord:
    """An A query for `name` carrying an EDNS Client Subnet (RFC 7871 section 6)."""
    address, prefix = network.split("/")
    length = (int(prefix) + 7) // 8
    payload = struct.pack("!HBB", 1, int(prefix), 0) + socket.inet_aton(address)[:length]
    query = DNSRecord.question(name, "A")
    query.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(8, payload)]))
    return query


def ask(query: DNSRecord, host: str, port: int) -> DNSRecord:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query.pack(), (host, port))
        data, _ = sock.recvfrom(65535)
    return DNSRecord.parse(data)


def test_the_demo_fleet_comes_up_serves_answers_dns_and_stops_cleanly(
    tmp_path: Path, up_processes: list[UpProcess]
) -> None:
    state = tmp_path / "state"
    up = UpProcess("--state-dir", str(state))
    up_processes.append(up)
    up.wait_for(lambda line: line == "edgeshield: ready")
    up.wait_for(lambda line: line.startswith("Ctrl-C"))
    fleet = load_fleet(state / "fleet.toml")
    output = up.output()
    for name in ["origin", "purge-api", *(n.name for n in fleet.nodes), "geo"]:
        assert f"edgeshield: started {name} pid " in output
        # The node's own output, prefixed with its name, and its row in the table.
        assert re.search(rf"^{name} +\| ", output, re.MULTILINE), name
        assert re.search(rf"^{name} +[a-z-]+ +[a-z-]+ +{up.pids_of(name)[-1]} ", output, re.M)
    token = next(
        line.split(": ", 1)[1] for line in up.lines if line.startswith("demo purge token: ")
    )
    assert f"EDGESHIELD_TOKEN={token}" in output

    for edge in fleet.edges:
        status, body = http_get(f"{edge.url}/pages/home", DEMO_HOST)
        assert status == 200, edge.name
        assert b"Content version" in body

    assert fleet.geo is not None
    dns_host, dns_port = fleet.geo.dns_listen.rsplit(":", 1)
    public = {edge.public_address for edge in fleet.edges}
    reply = ask(DNSRecord.question(f"{DEMO_SERVICE}.{DEMO_ZONE}", "A"), dns_host, int(dns_port))
    answers = {str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A}
    assert answers and answers <= public
    for region in fleet.regions:
        reply = ask(
            ecs_query(f"{DEMO_SERVICE}.{DEMO_ZONE}", region.client_networks[0]),
            dns_host,
            int(dns_port),
        )
        answers = {str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A}
        in_region = {e.public_address for e in fleet.edges if e.region == region.name}
        assert answers == in_region, region.name

    pids = up.pids()
    assert len(pids) == 2 + len(fleet.nodes) + 1
    up.proc.send_signal(signal.SIGTERM)
    assert up.finish() == 0
    assert up.lines[-1] == "edgeshield: stopped"
    assert [pid for pid in pids if alive(pid)] == []
    assert (state / "logs" / "edge-eu-west.log").stat().st_size > 0


def test_up_with_a_fleet_file_runs_its_nodes_and_stops_on_sigterm(
    tmp_path: Path, up_processes: list[UpProcess]
) -> None:
    dns_port, http_port = free_port(), free_port()
    config = tmp_path / "fleet.toml"
    config.write_text(
        '[[regions]]\nname = "eu"\nlatitude = 50.1\nlongitude = 8.7\n'
        'client_networks = ["198.51.100.0/24"]\n\n'
        '[[services]]\nname = "www"\nhosts = ["www.example.com"]\n'
        'origins = ["http://127.0.0.1:9"]\n\n'
        f'[geo]\ndns_listen = "127.0.0.1:{dns_port}"\n'
        f'http_listen = "127.0.0.1:{http_port}"\nzone = "cdn.test"\n',
        encoding="utf-8",
    )
    up = UpProcess("--config", str(config), "--state-dir", str(tmp_path / "state"))
    up_processes.append(up)
    up.wait_for(lambda line: line == "edgeshield: ready")
    up.wait_for(lambda line: line.startswith("Ctrl-C"))
    assert f"edgeshield: fleet file {config}" in up.output()
    assert any(line.startswith("geo ") and f"dns 127.0.0.1:{dns_port}" in line for line in up.lines)
    assert "origin" not in {line.split()[0] for line in up.lines if line}

    reply = ask(DNSRecord.question("cdn.test", "SOA"), "127.0.0.1", dns_port)
    assert reply.header.rcode == 0
    pids = up.pids()
    up.proc.send_signal(signal.SIGINT)
    assert up.finish() == 0
    assert [pid for pid in pids if alive(pid)] == []


def test_up_gives_up_on_a_node_that_cannot_start_and_stops_the_rest(
    tmp_path: Path, up_processes: list[UpProcess]
) -> None:
    # Holding the DNS port's UDP side makes GeoDNS fail to bind, and (unlike a held
    # TCP listener) cannot pass for GeoDNS in a health check.
    port = free_port()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", port))
    config = tmp_path / "fleet.toml"
    config.write_text(
        '[[regions]]\nname = "eu"\nlatitude = 50.1\nlongitude = 8.7\n\n'
        f'[geo]\ndns_listen = "127.0.0.1:{port}"\n'
        f'http_listen = "127.0.0.1:{free_port()}"\nzone = "cdn.test"\n',
        encoding="utf-8",
    )
    try:
        up = UpProcess("--config", str(config))
        up_processes.append(up)
        assert up.finish(timeout=60) == 1
    finally:
        taken.close()
    output = up.output()
    # one line naming the address and the key, and no restarts: a taken port stays taken
    busy = f"geo | edgeshield geo: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert busy in output
    assert "[geo] dns_listen in the fleet file" in output
    assert "Traceback" not in output
    assert "edgeshield: geo failed: cannot start as configured (its message is above)" in output
    assert up.lines[-1] == "edgeshield: stopped"
    assert [pid for pid in up.pids() if alive(pid)] == []


def origin_spec(name: str, stage: int, port: int) -> NodeSpec:
    return NodeSpec(
        name=name,
        role="origin",
        region="-",
        argv=(sys.executable, "-m", "demo.origin", "--listen", f"127.0.0.1:{port}"),
        health=HealthCheck(("127.0.0.1", port), f"http://127.0.0.1:{port}/healthz"),
        stage=stage,
    )


async def test_the_supervisor_restarts_a_killed_node_and_stops_every_child(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    specs = [origin_spec("first", 0, free_port()), origin_spec("second", 1, free_port())]
    supervisor = Supervisor(specs, dict(os.environ), tmp_path / "logs", lines.append)
    try:
        assert await supervisor.start(timeout=30)
        first = supervisor.node("first")
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not any("first is healthy again" in line for line in lines):
            assert time.monotonic() < deadline, "\n".join(lines)
            await asyncio.sleep(0.05)
        assert "edgeshield: first was killed by SIGKILL; restarting in 0.5s" in lines
        assert len(first.pids) == 2
    finally:
        await supervisor.stop()
    assert [pid for pid in supervisor.all_pids if alive(pid)] == []
    assert any(line.startswith("first  | demo origin: listening on") for line in lines)
    assert "demo origin: listening" in (tmp_path / "logs" / "second.log").read_text()


async def test_the_supervisor_reports_a_node_that_never_becomes_healthy(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    broken = NodeSpec(
        name="broken",
        role="origin",
        region="-",
        argv=(sys.executable, "-c", "import sys; print('cannot start'); sys.exit(3)"),
        health=HealthCheck(("127.0.0.1", free_port())),
        stage=0,
    )
    supervisor = Supervisor([broken], dict(os.environ), None, lines.append)
    try:
        assert not await supervisor.start(timeout=30)
    finally:
        await supervisor.stop()
    assert "broken | cannot start" in lines
    assert (
        "edgeshield: broken failed: exited with status 3 on the last of 3 starts "
        "(its messages are above)"
    ) in lines


def test_up_with_a_bad_fleet_file_names_the_mistake_and_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('[[regions]]\nname = "eu"\nlatitude = 95\nlongitude = 0\n', "utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "up", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{config}: [[regions]] #1 ('eu') key 'latitude': must be between -90 and 90" in (
        done.stderr
    )
    assert "started" not in done.stdout


def test_up_with_a_fleet_file_removes_the_directories_it_created(
    tmp_path: Path, up_processes: list[UpProcess]
) -> None:
    kept = tmp_path / "existing"
    kept.mkdir()
    config = tmp_path / "fleet.toml"
    config.write_text(
        '[[regions]]\nname = "eu"\nlatitude = 50.1\nlongitude = 8.7\n\n'
        '[[services]]\nname = "www"\nhosts = ["www.example.com"]\n'
        'origins = ["http://127.0.0.1:9"]\n\n'
        f'[[edges]]\nname = "edge1"\nregion = "eu"\nlisten = "127.0.0.1:{free_port()}"\n'
        f'admin_listen = "127.0.0.1:{free_port()}"\n'
        f'cache_dir = "{tmp_path / "state" / "edge1"}"\ncache_size = "16MiB"\n\n'
        f'[purge_api]\nlisten = "127.0.0.1:{free_port()}"\ndata_dir = "{kept / "purge"}"\n',
        encoding="utf-8",
    )
    up = UpProcess("--config", str(config))
    up_processes.append(up)
    up.wait_for(lambda line: line.startswith("Ctrl-C"))
    assert (tmp_path / "state" / "edge1").is_dir() and (kept / "purge").is_dir()
    up.proc.send_signal(signal.SIGINT)
    assert up.finish() == 0
    # state/ did not exist before: gone; existing/ did: kept, without what up made
    assert not (tmp_path / "state").exists()
    assert kept.is_dir() and not (kept / "purge").exists()
