"""A client network in, a Choice out: the geo source, the policy and edge health together.

`Router` is what the DNS responder, the HTTP endpoint and `geo lookup` all call, so
the three cannot disagree. It keeps a `version` that moves whenever an answer could
change (edge health, a reloaded database), which is what answer caches key on.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from fleet.config import Fleet, GeoConfig
from geo.choice import Choice, Chooser, IPNetwork, Placement, Site
from geo.source import GeoDatabaseError, GeoSource

__all__ = ["Router", "chooser_from_fleet"]

log = logging.getLogger("edgeshield.geo.routing")


def chooser_from_fleet(fleet: Fleet) -> Chooser:
    """The routing policy written in `fleet.toml` (defaults when there is no [geo])."""
    geo = fleet.geo or GeoConfig(dns_listen="", http_listen="", zone="")
    regions = {r.name: Placement(r.name, r.latitude, r.longitude) for r in fleet.regions}
    sites = [
        Site(
            e.name,
            e.region,
            regions[e.region].latitude,
            regions[e.region].longitude,
            e.public_address or e.listen_host,
        )
        for e in fleet.edges
    ]
    return Chooser(
        sites,
        regions.values(),
        coverage_zones=[(z.network, z.region) for z in geo.coverage_zones],
        default_region=geo.default_region,
        tie_distance_km=geo.tie_distance_km,
        answer_count=geo.answer_count,
    )


class Router:
    """Routes clients with a chooser, a geo source and the current healthy set."""

    def __init__(self, chooser: Chooser, source: GeoSource) -> None:
        self.chooser = chooser
        self.source = source
        self.healthy: frozenset[str] = frozenset(s.name for s in chooser.sites)
        self.version = 0

    def set_healthy(self, names: Iterable[str]) -> None:
        """Answer with these edges from now on."""
        healthy = frozenset(names)
        if healthy != self.healthy:
            self.healthy = healthy
            self.invalidate()

    def invalidate(self) -> None:
        """Something that answers depend on changed (health, the database)."""
        self.version += 1

    def route(self, client: IPNetwork, family: int | None = None) -> Choice:
        """The edges for `client` (an address as a /32 or /128, or an ECS subnet)."""
        mapped = client.network_address.ipv4_mapped if client.version == 6 else None
        if mapped is not None and client.prefixlen >= 96:
            # An IPv4 client seen through an IPv6 socket (::ffff:a.b.c.d, RFC 4291
            # section 2.5.5.2) is that IPv4 client.
            client = ipaddress.IPv4Network((mapped, client.prefixlen - 96))
        try:
            located = self.source.locate(client.network_address)
        except GeoDatabaseError as exc:
            log.error("GeoIP lookup failed, routing %s as unknown: %s", client, exc)
            located = None
        return self.chooser.choose(
            client,
            located.location if located else None,
            self.healthy,
            family=family,
            location_prefix=located.prefixlen if located else None,
        )
