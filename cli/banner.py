"""What `edgeshield up` shows once the fleet is ready: the table of nodes and commands
to try against them."""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cli.demo import DemoInfo
from cli.plan import NodeSpec, url_host
from fleet.config import Fleet, split_host_port

__all__ = ["format_table", "try_commands"]


def _edgeshield_command() -> str:
    """How the user can run `edgeshield` from here."""
    beside = Path(sys.executable).parent / "edgeshield"
    if beside.exists():
        return shlex.quote(str(beside))
    if shutil.which("edgeshield"):
        return "edgeshield"
    return f"{shlex.quote(sys.executable)} -m cli.main"


def format_table(specs: Sequence[NodeSpec], pids: Mapping[str, int]) -> list[str]:
    """The table of what is where: node, role, region, pid, addresses."""
    header = ("NODE", "ROLE", "REGION", "PID", "ADDRESSES")
    rows = [
        (s.name, s.role, s.region, str(pids.get(s.name, "")), "  ".join(s.addresses)) for s in specs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in [header, *rows]
    ]


def try_commands(
    fleet: Fleet, specs: Sequence[NodeSpec], demo: DemoInfo | None, secret: str | None = None
) -> list[str]:
    """A few commands to try against the running fleet (`secret`: the node secret,
    shown for the demo only, whose secret is made up for the run)."""
    lines: list[str] = []
    host = demo.host if demo else (fleet.services[0].hosts[0] if fleet.services else "")
    path = "/pages/home" if demo else "/"
    for edge in fleet.edges[:3] if host else ():
        lines.append(f"curl -si -H 'Host: {host}' {edge.url}{path}")
    if demo:
        edge_url = fleet.edges[0].url
        lines.append(
            f"curl -s -o /dev/null -D - -H 'Host: {host}' -H 'Accept-Encoding: br' "
            f"{edge_url}/pages/home"
        )
        lines.append(f"curl -s -X POST {demo.origin_url}/admin/bump")
    if fleet.purge_api is not None and fleet.services:
        token = shlex.quote(demo.token) if demo else "YOUR_TOKEN"
        service = demo.service if demo else fleet.services[0].name
        target = "--tag pages" if demo else "--all"
        lines.append(
            f"EDGESHIELD_TOKEN={token} {_edgeshield_command()} purge "
            f"--api {fleet.purge_api.url} --service {service} {target} --wait 5"
        )
    if fleet.edges:
        auth = (
            shlex.quote(f"Authorization: Bearer {secret}")
            if secret
            else (f'"Authorization: Bearer ${fleet.security.node_secret_env}"')
        )
        admin = fleet.edges[0].admin_url
        lines.append(f"curl -s -H {auth} {admin}/metrics | grep edgeshield_requests")
        if host:
            lines.append(f"curl -s -H {auth} '{admin}/v1/cache?url=http://{host}{path}'")
    if fleet.purge_api is not None:
        status = f"{fleet.purge_api.url}/status"
        lines.append(f"curl -s {status}.json    # the data of the status page, {status}")
    if fleet.geo is not None:
        dns_host, dns_port = split_host_port(fleet.geo.dns_listen)
        name = f"{fleet.services[0].name}.{fleet.geo.zone}" if fleet.services else fleet.geo.zone
        for region in fleet.regions:
            for network in region.client_networks[:1]:
                lines.append(
                    f"dig @{dns_host} -p {dns_port} {name} A +subnet={network}    # {region.name}"
                )
        http_host, http_port = split_host_port(fleet.geo.http_listen)
        route_url = f"http://{url_host(http_host)}:{http_port}"
        sample = next((r.client_networks[0] for r in fleet.regions if r.client_networks), "")
        if sample:
            sample_net = ipaddress.ip_network(sample, strict=False)
            ip = sample_net[10] if sample_net.num_addresses > 10 else sample_net[0]
            lines.append(f"curl -s '{route_url}/v1/route?ip={ip}'")
    return lines
