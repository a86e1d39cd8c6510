"""The built-in demo fleet that `edgeshield up` runs when it is given no fleet file.

Three regions (Frankfurt, New York, Tokyo) with client networks from the
documentation ranges of RFC 5737, one service in front of the demo origin, two
shields, one edge per region, the purge API with a fresh token, and GeoDNS. Each
region's edge listens on its own loopback address (127.0.1.1, 127.0.2.1, 127.0.3.1)
where this machine allows it, so GeoDNS answers differ by region as they would in a
real fleet; elsewhere every node shares 127.0.0.1 on its own ports. Ports are picked
free when the fleet is written.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEMO_HOST", "DEMO_SERVICE", "DEMO_ZONE", "DemoInfo", "demo_fleet_toml", "free_port"]

DEMO_SERVICE = "www"
DEMO_HOST = "www.demo.test"
DEMO_ZONE = "cdn.demo.test"

# (name, latitude, longitude, client network, loopback address for its edge)
_REGIONS = (
    ("eu-west", 50.11, 8.68, "198.51.100.0/24", "127.0.1.1"),
    ("us-east", 40.71, -74.01, "203.0.113.0/24", "127.0.2.1"),
    ("ap-northeast", 35.68, 139.69, "192.0.2.0/24", "127.0.3.1"),
)
_SHIELD_REGIONS = ("eu-west", "us-east")


@dataclass(frozen=True)
class DemoInfo:
    """What the demo fleet's user needs beyond the fleet file: the token above all.

    The fleet file holds only the token's SHA-256, so the token itself exists here
    and in what `edgeshield up` prints, nowhere else.
    """

    token: str
    service: str
    host: str
    zone: str
    origin_listen: str
    client_networks: dict[str, str]

    @property
    def origin_url(self) -> str:
        """Base URL of the demo origin."""
        return f"http://{self.origin_listen}"


def free_port(host: str = "127.0.0.1", taken: set[int] | None = None) -> int:
    """A port free for both TCP and UDP on `host` now, and not in `taken` (then added).

    Both, because GeoDNS serves one port over UDP and TCP. Another process may still
    take the port before ours binds it; `edgeshield up` restarts a node that fails.
    """
    taken = set() if taken is None else taken
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if port in taken:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        return port


def _can_bind(host: str) -> bool:
    """Whether this machine lets us listen on `host` (Linux routes all of 127/8)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(text)


def demo_fleet_toml(state_dir: Path) -> tuple[str, DemoInfo]:
    """The demo fleet file's text, with caches and purge data under `state_dir`."""
    taken: set[int] = set()
    separate_loopbacks = all(_can_bind(region[4]) for region in _REGIONS)
    token = "demo-" + secrets.token_urlsafe(24)
    digest = hashlib.sha256(token.encode()).hexdigest()
    origin_listen = f"127.0.0.1:{free_port('127.0.0.1', taken)}"

    lines = [
        "# The edgeshield demo fleet, written by `edgeshield up`; ports are picked per run.",
        "",
    ]
    for name, latitude, longitude, network, _ in _REGIONS:
        lines += [
            "[[regions]]",
            f"name = {_q(name)}",
            f"latitude = {latitude}",
            f"longitude = {longitude}",
            f"client_networks = [{_q(network)}]",
            "",
        ]
    lines += [
        "[[services]]",
        f"name = {_q(DEMO_SERVICE)}",
        f"hosts = [{_q(DEMO_HOST)}]",
        f"origins = [{_q('http://' + origin_listen)}]",
        'health_check_path = "/healthz"',
        "health_check_interval = 2.0",
        "",
    ]
    for name in _SHIELD_REGIONS:
        node = f"shield-{name}"
        lines += _node_lines("shields", node, name, "127.0.0.1", state_dir, taken)
    for name, _, _, _, loopback in _REGIONS:
        host = loopback if separate_loopbacks else "127.0.0.1"
        lines += _node_lines("edges", f"edge-{name}", name, host, state_dir, taken)
        lines += [f"public_address = {_q(host)}", ""]
    lines += [
        "[purge_api]",
        f"listen = {_q(f'127.0.0.1:{free_port(taken=taken)}')}",
        f"data_dir = {_q(str(state_dir / 'purge-api'))}",
        f'tokens = [{{ name = "demo", sha256 = {_q(digest)}, services = [{_q(DEMO_SERVICE)}] }}]',
        "",
        "[geo]",
        f"dns_listen = {_q(f'127.0.0.1:{free_port(taken=taken)}')}",
        f"http_listen = {_q(f'127.0.0.1:{free_port(taken=taken)}')}",
        f"zone = {_q(DEMO_ZONE)}",
        f"mmdb = {_q(str(state_dir / 'geo' / 'demo.mmdb'))}",
        "ttl = 30",
        "",
        "[security]",
        'node_secret_env = "EDGESHIELD_NODE_SECRET"',
        "",
    ]
    info = DemoInfo(
        token=token,
        service=DEMO_SERVICE,
        host=DEMO_HOST,
        zone=DEMO_ZONE,
        origin_listen=origin_listen,
        client_networks={name: network for name, _, _, network, _ in _REGIONS},
    )
    return "\n".join(lines), info


def _node_lines(
    table: str, node: str, region: str, host: str, state_dir: Path, taken: set[int]
) -> list[str]:
    return [
        f"[[{table}]]",
        f"name = {_q(node)}",
        f"region = {_q(region)}",
        f"listen = {_q(f'{host}:{free_port(host, taken)}')}",
        f"admin_listen = {_q(f'{host}:{free_port(host, taken)}')}",
        f"cache_dir = {_q(str(state_dir / 'cache' / node))}",
        'cache_size = "256MiB"',
        'memory_size = "32MiB"',
        "workers = 1",
    ] + ([""] if table == "shields" else [])
