"""`edgeshield up` for a fleet whose purge log is on JetStream: local nats-servers to start.

When `[purge_api] log = "jetstream"` and `[nats] servers` are addresses of this
machine (loopback), `up` runs one `nats-server` per address with JetStream on, its
store under `<[purge_api] data_dir>/nats/<name>`, before the purge API. Several
addresses form one cluster, each server's route port being its client port + 2000.
Servers elsewhere are left alone: `up` expects them to run (docs/deploy.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

from cli.plan import HealthCheck, NodeSpec
from fleet.config import Fleet

__all__ = ["ROUTE_PORT_OFFSET", "NatsServerMissing", "local_nats_servers", "nats_specs"]

#: a local server's cluster route port, from its client port
ROUTE_PORT_OFFSET = 2000
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class NatsServerMissing(Exception):
    """The fleet asks for a local JetStream and `nats-server` is not installed."""


def local_nats_servers(fleet: Fleet) -> list[tuple[str, int]]:
    """(host, port) of each `[nats] server` on this machine, when the log is JetStream."""
    if fleet.purge_api is None or fleet.purge_api.log != "jetstream" or fleet.nats is None:
        return []
    local = []
    for url in fleet.nats.servers:
        parts = urlsplit(url)
        if parts.scheme == "nats" and parts.hostname in _LOOPBACK and parts.port:
            local.append((parts.hostname, parts.port))
    return local


def nats_specs(fleet: Fleet, stage: int = 0) -> list[NodeSpec]:
    """The nats-server processes `up` starts for `fleet` (none when it needs none)."""
    servers = local_nats_servers(fleet)
    if not servers:
        return []
    binary = shutil.which("nats-server")
    if binary is None:
        raise NatsServerMissing(
            "the fleet's purge log is JetStream on this machine and nats-server is not "
            "installed (Debian: apt-get install nats-server)"
        )
    assert fleet.purge_api is not None
    store = Path(fleet.purge_api.data_dir) / "nats"
    specs = []
    for index, (host, port) in enumerate(servers):
        name = f"nats{index + 1}" if len(servers) > 1 else "nats"
        argv = [binary, "-js", "-a", host, "-p", str(port), "-sd", str(store / name), "-n", name]
        if len(servers) > 1:
            routes = ",".join(
                f"nats-route://{h}:{p + ROUTE_PORT_OFFSET}"
                for i, (h, p) in enumerate(servers)
                if i != index
            )
            argv += [
                "--cluster_name",
                "edgeshield",
                "--cluster",
                f"nats://{host}:{port + ROUTE_PORT_OFFSET}",
                "--routes",
                routes,
            ]
        specs.append(
            NodeSpec(
                name=name,
                role="nats",
                region="-",
                argv=tuple(argv),
                health=HealthCheck((host, port)),
                stage=stage,
                addresses=(f"nats://{host}:{port}",),
            )
        )
    return specs
