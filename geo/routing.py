"""A client network in, a Choice out: the geo source, the policy and edge health together.

`Router` is what the DNS responder, the HTTP endpoint and `geo lookup` all call, so
the three cannot disagree. It keeps a `version` that moves whenever an answer could
change (edge health, a reloaded database), which is what answer caches key on.

`Router.answer` is the DNS path: only the edges' addresses and the deciding prefix,
remembered per client hash network (a /24 or /56, the unit ties are spread over) and
family when everything that decides is the same across that network, and forgotten
when the version moves.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from fleet.config import Fleet, GeoConfig
from geo.choice import (
    HASH_PREFIX_V4,
    HASH_PREFIX_V6,
    Choice,
    Chooser,
    IPNetwork,
    Placement,
    Site,
)
from geo.source import GeoDatabaseError, GeoSource, Located

__all__ = ["ANSWER_CACHE_ENTRIES", "Answer", "Router", "chooser_from_fleet"]

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


# Client networks remembered by `Router.answer` before the cache starts over.
ANSWER_CACHE_ENTRIES = 65_536


@dataclass(frozen=True, slots=True)
class Answer:
    """What a DNS answer takes from a Choice: the edges' addresses in order, and the
    prefix length of the network whose policy decided (None: nothing narrower)."""

    addresses: tuple[str, ...]
    deciding_prefix: int | None
    #: the region of the first edge answered (for the metrics; not part of the answer)
    region: str = field(default="", compare=False)


class Router:
    """Routes clients with a chooser, a geo source and the current healthy set."""

    def __init__(self, chooser: Chooser, source: GeoSource) -> None:
        self.chooser = chooser
        self.source = source
        self.healthy: frozenset[str] = frozenset(s.name for s in chooser.sites)
        self.version = 0
        self._answers: dict[tuple[int, int, int, int], Answer] = {}
        self._answers_version = 0
        self.answer_hits = 0

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
        client = _unmapped(client)
        try:
            located = self.source.locate(client.network_address)
        except GeoDatabaseError as exc:
            log.error("GeoIP lookup failed, routing %s as unknown: %s", client, exc)
            located = None
        return self._choose(client, located, family)

    def answer(self, version: int, address: int, prefixlen: int, family: int) -> Answer:
        """What `route(client, family)` answers with for the client network
        `address`/`prefixlen` of IP `version`, from the cache when it can be.

        The client comes as numbers, not an ip_network, because on the DNS path
        most clients are answered from the cache and never need one built.

        A client wider than its hash network (client_hash_network: a /24 or /56)
        has its answer kept for itself alone. Any other client's answer is kept for
        the hash network, shared by every client inside it, and only when no
        database network and no coverage zone inside the hash network could tell
        those clients apart; when one could, it is worked out every time.
        """
        if self._answers_version != self.version:
            self._answers.clear()
            self._answers_version = self.version
        if version == 6 and prefixlen >= 96 and address >> 32 == 0xFFFF:
            # ::ffff:a.b.c.d is an IPv4 client, as in route().
            version, address, prefixlen = 4, address & 0xFFFFFFFF, prefixlen - 96
        if version == 4:
            width, limit = 32, HASH_PREFIX_V4
        else:
            width, limit = 128, HASH_PREFIX_V6
        prefix = min(prefixlen, limit)
        key = (family, version, prefix, address >> (width - prefix))
        cached = self._answers.get(key)
        if cached is not None:
            self.answer_hits += 1
            return cached
        client: IPNetwork
        if version == 4:
            client = ipaddress.IPv4Network((address, prefixlen))
        else:
            client = ipaddress.IPv6Network((address, prefixlen))
        located: Located | None = None
        try:
            located, span = self.source.locate_with_span(client.network_address)
        except GeoDatabaseError as exc:
            log.error("GeoIP lookup failed, routing %s as unknown: %s", client, exc)
            span = -1  # a failed lookup says nothing about the network's other clients
        choice = self._choose(client, located, family)
        answer = Answer(
            tuple(ranked.site.address for ranked in choice.edges),
            choice.deciding_prefix,
            choice.edges[0].site.region if choice.edges else "",
        )
        if span >= 0 and self._holds_for_key(client, span):
            if len(self._answers) >= ANSWER_CACHE_ENTRIES:
                self._answers.clear()
            self._answers[key] = answer
        return answer

    def _holds_for_key(self, client: IPNetwork, span: int) -> bool:
        """Whether every client with `client`'s hash key is routed as `client` is,
        when the geo source's answer for it holds over `span` leading bits."""
        limit = HASH_PREFIX_V4 if client.version == 4 else HASH_PREFIX_V6
        if client.prefixlen < limit:
            return True  # the key is the client network itself
        # The key is the hash network, shared by every client inside it (this one
        # may be exactly that network, or a /32 in it).
        hash_network = client.supernet(new_prefix=limit) if client.prefixlen > limit else client
        return span <= limit and not self.chooser.splits(hash_network)

    def _choose(self, client: IPNetwork, located: Located | None, family: int | None) -> Choice:
        return self.chooser.choose(
            client,
            located.location if located else None,
            self.healthy,
            family=family,
            location_prefix=located.prefixlen if located else None,
        )


def _unmapped(client: IPNetwork) -> IPNetwork:
    mapped = client.network_address.ipv4_mapped if client.version == 6 else None
    if mapped is not None and client.prefixlen >= 96:
        # An IPv4 client seen through an IPv6 socket (::ffff:a.b.c.d, RFC 4291
        # section 2.5.5.2) is that IPv4 client.
        return ipaddress.IPv4Network((mapped, client.prefixlen - 96))
    return client
