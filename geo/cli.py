"""`edgeshield geo serve | build-mmdb | lookup`: the geo commands behind cli/main.py."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from fleet.config import Fleet, load_fleet, node_secret
from geo.health import HealthMonitor
from geo.mmdb_build import build_fleet_mmdb
from geo.routing import Router, chooser_from_fleet
from geo.server import GeoService
from geo.source import GeoDatabaseError, MmdbSource
from runtime.errors import install_repeat_filter

__all__ = ["build_mmdb", "lookup", "serve"]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@contextlib.contextmanager
def _database_for(fleet: Fleet) -> Iterator[str]:
    """The fleet's .mmdb path; without one, a simulated database built for the run."""
    configured = fleet.geo.mmdb if fleet.geo else ""
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="edgeshield-geo-") as folder:
        path = os.path.join(folder, "fleet.mmdb")
        build_fleet_mmdb(fleet, path)
        yield path


def serve(fleet: Fleet) -> int:
    """Run GeoDNS and the route endpoint until SIGTERM or SIGINT; 0 on a clean stop."""
    if fleet.geo is None:
        print(f"edgeshield geo: {fleet.source} has no [geo] table", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    install_repeat_filter()
    if not node_secret(fleet):
        print(
            f"edgeshield geo: warning: ${fleet.security.node_secret_env} is not set;"
            " edge health checks will be refused",
            file=sys.stderr,
        )
    try:
        with _database_for(fleet) as path, asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve(fleet, path))
    except GeoDatabaseError as exc:
        print(f"edgeshield geo: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edgeshield geo: cannot listen: {exc}", file=sys.stderr)
        return 1


async def _serve(fleet: Fleet, mmdb_path: str) -> int:
    service = GeoService(fleet, mmdb_path)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await service.start()
    dns_host, dns_port = service.dns_address
    http_host, http_port = service.http_address
    print(
        f"edgeshield geo: zone {service.geo.zone} DNS on udp+tcp {dns_host}:{dns_port},"
        f" route API on http://{http_host}:{http_port}, database {mmdb_path}"
        f" ({service.source.database.database_type}), {len(fleet.edges)} edges",
        flush=True,
    )
    try:
        await stopping.wait()
    finally:
        await service.stop()
    return 0


def build_mmdb(fleet: Fleet, output: str) -> int:
    """Write the simulated .mmdb of `fleet` to `output`."""
    count = build_fleet_mmdb(fleet, output)
    regions = sum(1 for r in fleet.regions if r.client_networks)
    print(f"wrote {output}: {count} networks in {regions} regions")
    return 0


def lookup(ip: str, fleet: Fleet | None) -> int:
    """Print where `ip` is, which edge it gets and why.

    Without --config, $EDGESHIELD_CONFIG or ./fleet.toml is used.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        print(f"edgeshield geo lookup: {ip!r} is not an IP address", file=sys.stderr)
        return 2
    if fleet is None:
        default = os.environ.get("EDGESHIELD_CONFIG") or "fleet.toml"
        if not Path(default).exists():
            print(
                "edgeshield geo lookup: no fleet file; pass --config F (or set $EDGESHIELD_CONFIG)",
                file=sys.stderr,
            )
            return 2
        fleet = load_fleet(default)
    try:
        with _database_for(fleet) as path:
            source = MmdbSource(path)
            try:
                return _print_lookup(address, fleet, source)
            finally:
                source.close()
    except GeoDatabaseError as exc:
        print(f"edgeshield geo lookup: {exc}", file=sys.stderr)
        return 2


def _print_lookup(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, fleet: Fleet, source: MmdbSource
) -> int:
    router = Router(chooser_from_fleet(fleet), source)
    states = asyncio.run(_check_health(fleet))
    if states is not None:
        router.set_healthy(name for name, (ok, _) in states.items() if ok)
    located = source.locate(address)
    choice = router.route(ipaddress.ip_network(address))
    print(f"address:   {address}")
    print(f"database:  {source.path} ({source.database.database_type})")
    if located is None:
        print("location:  not in the database")
    else:
        print(f"location:  {located.location.describe()} (network {located.network})")
    if choice.edges:
        first = choice.edges[0]
        print(
            f"edge:      {first.site.name} ({first.site.address}, region {first.site.region},"
            f" {first.distance_km:.0f} km)"
        )
        for other in choice.edges[1:]:
            print(
                f"also:      {other.site.name} ({other.site.address}, {other.distance_km:.0f} km)"
            )
    else:
        print("edge:      none")
    print("why:")
    for reason in choice.reasons:
        print(f"  - {reason}")
    if states is not None:
        print("health:")
        for name, (ok, detail) in states.items():
            print(f"  {name}: {'healthy' if ok else 'down'} ({detail})")
    return 0


async def _check_health(fleet: Fleet) -> dict[str, tuple[bool, str]] | None:
    """One round of edge health checks, or None when the node secret is not set."""
    secret = node_secret(fleet)
    if not secret or not fleet.edges:
        return None
    async with HealthMonitor(fleet.edges, secret, interval=1.0) as monitor:
        await monitor.poll_once()
        return {name: (s.healthy, s.detail) for name, s in monitor.states.items()}
