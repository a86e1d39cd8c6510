"""The plan of `edgeshield up`: which processes make up a fleet, in what order, and
how to tell each is healthy.

Nodes start in dependency order (origin, purge API, shields, edges, GeoDNS), each
stage only once the one before is healthy, so an edge finds its shields and the purge
log when it starts.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from cli.demo import DemoInfo
from fleet.config import Fleet, split_host_port

__all__ = ["HealthCheck", "NodeSpec", "cli_argv", "plan_fleet", "url_host"]


@dataclass(frozen=True)
class HealthCheck:
    """How to tell a node is up: it accepts TCP, and (if given) answers 200 over HTTP."""

    tcp: tuple[str, int]
    http_url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeSpec:
    """One process of the fleet: what to run, how to check it, and what to show."""

    name: str
    role: str
    region: str
    argv: tuple[str, ...]
    health: HealthCheck
    stage: int
    addresses: tuple[str, ...] = ()


def cli_argv(*args: str) -> tuple[str, ...]:
    """The argv that runs `edgeshield ARGS...` with this interpreter."""
    return (sys.executable, "-m", "cli.main", *args)


def plan_fleet(
    fleet: Fleet, config_path: str, node_secret: str, demo: DemoInfo | None = None
) -> list[NodeSpec]:
    """The processes that make up `fleet`, in start order (origin first, geo last)."""
    admin = {"Authorization": f"Bearer {node_secret}"}
    specs: list[NodeSpec] = []
    if demo is not None:
        host, port = split_host_port(demo.origin_listen)
        specs.append(
            NodeSpec(
                name="origin",
                role="origin",
                region="-",
                argv=(sys.executable, "-m", "demo.origin", "--listen", demo.origin_listen),
                health=HealthCheck((host, port), f"{demo.origin_url}/healthz"),
                stage=0,
                addresses=(demo.origin_url,),
            )
        )
    if fleet.purge_api is not None:
        api = fleet.purge_api
        # one process per replica address ([purge_api] listen as a list, a JetStream log)
        for index, (address, url) in enumerate(
            zip(api.replicas or (api.listen,), api.urls, strict=True)
        ):
            listen = ("--listen", address) if api.replicas else ()
            specs.append(
                NodeSpec(
                    name="purge-api" if index == 0 else f"purge-api-{index + 1}",
                    role="purge-api",
                    region="-",
                    argv=cli_argv("purge-api", "--config", config_path, *listen),
                    health=HealthCheck(split_host_port(address), f"{url}/healthz"),
                    stage=1,
                    addresses=(url,),
                )
            )
    for stage, role, nodes in ((2, "shield", fleet.shields), (3, "edge", fleet.edges)):
        for node in nodes:
            specs.append(
                NodeSpec(
                    name=node.name,
                    role=role,
                    region=node.region,
                    argv=cli_argv(role, "--config", config_path, "--node", node.name),
                    health=HealthCheck(
                        split_host_port(node.listen), f"{node.admin_url}/healthz", admin
                    ),
                    stage=stage,
                    addresses=(node.url, f"admin {node.admin_url}"),
                )
            )
    if fleet.geo is not None:
        geo = fleet.geo
        dns_host, dns_port = split_host_port(geo.dns_listen)
        http_host, http_port = split_host_port(geo.http_listen)
        route_url = f"http://{url_host(http_host)}:{http_port}"
        specs.append(
            NodeSpec(
                name="geo",
                role="geo",
                region="-",
                argv=cli_argv("geo", "serve", "--config", config_path),
                # GeoDNS serves its port over TCP as well as UDP, so a TCP accept says
                # DNS is up; the route endpoint answering shows the process is geo.
                health=HealthCheck((dns_host, dns_port), f"{route_url}/v1/route?ip=127.0.0.1"),
                stage=4,
                addresses=(f"dns {geo.dns_listen} (udp+tcp)", route_url),
            )
        )
    return specs


def url_host(host: str) -> str:
    """`host` as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
