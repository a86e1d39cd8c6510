"""The nearest-edge choice: pure, I/O-free, and the same for DNS, HTTP and the CLI.

Given where a client is (or is not), which edges are healthy and the routing policy
of the fleet (coverage zones, a default region, a tie distance, an answer count),
`Chooser.choose` returns a `Choice`: the edges to answer with, in order, and the
reasoning behind them. It reads no clock, no file and no socket, so a table of real
cities in a test can pin its behaviour down exactly.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Iterable, Set
from dataclasses import dataclass

__all__ = [
    "EARTH_RADIUS_KM",
    "HASH_PREFIX_V4",
    "HASH_PREFIX_V6",
    "Choice",
    "Chooser",
    "IPAddress",
    "IPNetwork",
    "Location",
    "Placement",
    "Ranked",
    "Site",
    "client_hash_key",
    "client_hash_network",
    "great_circle_km",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The mean Earth radius (IUGG), the usual choice for the haversine formula.
EARTH_RADIUS_KM = 6371.0088

# Ties are spread per client network rather than per address: a /24 (IPv4) or a /56
# (IPv6) is what recursive resolvers send as EDNS Client Subnet by default
# (RFC 7871 section 11.1 recommends 24 and 56), so the spread is the same whether a
# client is seen through ECS or directly.
HASH_PREFIX_V4 = 24
HASH_PREFIX_V6 = 56


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in km between two points on the Earth, by the haversine formula."""
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def client_hash_network(network: IPNetwork) -> IPNetwork:
    """The network whose hash spreads ties: `network` cut to at most /24 or /56."""
    limit = HASH_PREFIX_V4 if network.version == 4 else HASH_PREFIX_V6
    if network.prefixlen <= limit:
        return network
    return network.supernet(new_prefix=limit)


@dataclass(frozen=True, slots=True)
class Location:
    """A point on the Earth, with the names a GeoIP database gives it."""

    latitude: float
    longitude: float
    country: str = ""
    city: str = ""

    def describe(self) -> str:
        """ "Frankfurt am Main, DE (50.11, 8.68)", leaving out what is unknown."""
        names = ", ".join(n for n in (self.city, self.country) if n)
        point = f"({self.latitude:.2f}, {self.longitude:.2f})"
        return f"{names} {point}" if names else point


@dataclass(frozen=True, slots=True)
class Site:
    """An edge as the choice sees it: its name, region, coordinates and address."""

    name: str
    region: str
    latitude: float
    longitude: float
    address: str

    @property
    def family(self) -> int:
        """4 or 6: the IP version of the public address (A or AAAA)."""
        return 6 if ":" in self.address else 4


@dataclass(frozen=True, slots=True)
class Placement:
    """A region: a name and the point its edges are measured from."""

    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class Ranked:
    """One edge of an answer and its distance from the client's point."""

    site: Site
    distance_km: float


@dataclass(frozen=True)
class Choice:
    """The edges to answer with, in order, and why.

    `basis` is one of "coverage-zone", "geoip", "default-region", "unknown";
    `deciding_prefix` is the prefix length of the network whose policy decided (the
    coverage zone or the database network), so a DNS answer can say how far it
    holds (RFC 7871 scope). The reasoning text is built only when asked for: the DNS
    path never needs it.
    """

    client_network: IPNetwork
    basis: str
    point: Location | None
    edges: tuple[Ranked, ...]
    region: str = ""
    location: Location | None = None
    deciding_prefix: int | None = None
    tied: tuple[str, ...] = ()
    all_down: bool = False
    tie_distance_km: float = 0.0

    @property
    def deciding_network(self) -> IPNetwork | None:
        """The coverage zone or database network that decided, if any."""
        if self.deciding_prefix is None:
            return None
        address = self.client_network.network_address
        return ipaddress.ip_network((address, self.deciding_prefix), strict=False)

    @property
    def reasons(self) -> tuple[str, ...]:
        """The reasoning, one step per line."""
        client = self.client_network
        if self.basis == "coverage-zone":
            why = [f"{client} is in coverage zone {self.deciding_network} of region {self.region}"]
        elif self.basis == "geoip" and self.location is not None:
            why = [f"{client} is located at {self.location.describe()} by the GeoIP database"]
        elif self.basis == "default-region":
            why = [f"{client} is not in the GeoIP database; default region {self.region}"]
        else:
            why = [f"{client} is not in the GeoIP database and there is no default region"]
        if self.all_down:
            # With every edge failing its check, answering with all of them beats
            # answering with none: the same fail-open rule as Route 53's health
            # checks ("if all records are unhealthy, respond as if all were healthy").
            why.append("no edge is healthy; answering as if all were")
        if not self.edges:
            why.append("no edge has an address of this family")
            return tuple(why)
        first = self.edges[0]
        if self.point is None:
            why.append(f"edge {first.site.name} in {first.site.region}")
        else:
            kind = "nearest edge" if self.all_down else "nearest healthy edge"
            why.append(
                f"{kind} {first.site.name} in {first.site.region} at {first.distance_km:.0f} km"
            )
        if len(self.tied) > 1:
            why.append(
                f"{len(self.tied)} edges within {self.tie_distance_km:g} km of the nearest;"
                f" spread by a hash of {client_hash_network(client)}"
            )
        return tuple(why)

    @property
    def reason(self) -> str:
        """The reasoning as one line of text."""
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class _Zone:
    network: IPNetwork
    region: Placement


class Chooser:
    """The routing policy of a fleet, ready to choose edges for clients."""

    def __init__(
        self,
        sites: Iterable[Site],
        regions: Iterable[Placement],
        *,
        coverage_zones: Iterable[tuple[str, str]] = (),
        default_region: str = "",
        tie_distance_km: float = 50.0,
        answer_count: int = 1,
    ) -> None:
        self.sites: tuple[Site, ...] = tuple(sites)
        self.regions = {region.name: region for region in regions}
        for site in self.sites:
            if site.region not in self.regions:
                raise ValueError(f"edge {site.name!r}: no region named {site.region!r}")
        if default_region and default_region not in self.regions:
            raise ValueError(f"default region {default_region!r} is not a region")
        if answer_count < 1:
            raise ValueError("answer_count must be at least 1")
        zones = [
            _Zone(ipaddress.ip_network(network, strict=False), self.regions[region])
            for network, region in coverage_zones
        ]
        # Most specific first, so the first zone that contains a client decides
        # (longest-prefix match, as routing tables do).
        zones.sort(key=lambda zone: -zone.network.prefixlen)
        self.zones: tuple[_Zone, ...] = tuple(zones)
        self.default_region = default_region
        self.tie_distance_km = tie_distance_km
        self.answer_count = answer_count
        self._points = {r.name: Location(r.latitude, r.longitude) for r in self.regions.values()}
        self._by_family: dict[int | None, tuple[Site, ...]] = {
            None: self.sites,
            4: tuple(s for s in self.sites if s.family == 4),
            6: tuple(s for s in self.sites if s.family == 6),
        }

    def splits(self, network: IPNetwork) -> bool:
        """Whether a coverage zone lies inside `network` without covering all of it,
        so that its clients are not all routed alike."""
        shift = network.max_prefixlen - network.prefixlen
        bits = int(network.network_address) >> shift
        for zone in self.zones:  # most specific first
            inner = zone.network
            if inner.prefixlen <= network.prefixlen:
                return False
            if inner.version == network.version and int(inner.network_address) >> shift == bits:
                return True
        return False

    def coverage_zone(self, address: IPAddress) -> tuple[IPNetwork, Placement] | None:
        """The most specific coverage zone holding `address`, and its region."""
        for zone in self.zones:
            if zone.network.version == address.version and address in zone.network:
                return zone.network, zone.region
        return None

    def choose(
        self,
        client: IPNetwork,
        location: Location | None,
        healthy: Set[str],
        *,
        family: int | None = None,
        location_prefix: int | None = None,
    ) -> Choice:
        """The nearest healthy edges for `client` (an address as /32 or /128, or an ECS
        subnet), located at `location` by the GeoIP database (None: not known).

        Only edges whose public address is of `family` (4 or 6) are candidates when
        it is given. Coverage zones are checked before the database; an unknown
        location falls to the default region, else every edge is equally near.
        `location_prefix` is the prefix length of the database network that placed
        the client.
        """
        region_name = ""
        point: Location | None
        deciding: int | None = None
        zone = self.coverage_zone(client.network_address) if self.zones else None
        if zone is not None:
            basis = "coverage-zone"
            deciding = zone[0].prefixlen
            region_name = zone[1].name
            point = self._points[region_name]
        elif location is not None:
            basis = "geoip"
            point = location
            deciding = location_prefix
        elif self.default_region:
            basis = "default-region"
            region_name = self.default_region
            point = self._points[region_name]
        else:
            basis = "unknown"
            point = None

        candidates = self._by_family[family]
        up = [s for s in candidates if s.name in healthy]
        all_down = bool(candidates) and not up
        if all_down:
            up = list(candidates)  # fail open; see Choice.reasons

        if point is None:
            ranked = [Ranked(s, 0.0) for s in up]
        else:
            lat, lon = point.latitude, point.longitude
            ranked = [Ranked(s, great_circle_km(lat, lon, s.latitude, s.longitude)) for s in up]
            ranked.sort(key=lambda r: (r.distance_km, r.site.name))
        tied: list[Ranked] = []
        if ranked:
            limit = ranked[0].distance_km + self.tie_distance_km
            tied = [r for r in ranked if r.distance_km <= limit]
            if len(tied) > 1:
                key = client_hash_key(client)
                tied.sort(key=lambda r: _rendezvous(key, r.site.name), reverse=True)
                ranked = tied + ranked[len(tied) :]
        return Choice(
            client_network=client,
            basis=basis,
            point=point,
            edges=tuple(ranked[: self.answer_count]),
            region=region_name,
            location=location,
            deciding_prefix=deciding,
            tied=tuple(r.site.name for r in tied),
            all_down=all_down,
            tie_distance_km=self.tie_distance_km,
        )


def client_hash_key(client: IPNetwork) -> bytes:
    """The bytes of `client_hash_network(client)`, computed without building it: the
    network's bits and its prefix length, so two keys are equal exactly when the
    hash networks are."""
    width = client.max_prefixlen
    limit = HASH_PREFIX_V4 if width == 32 else HASH_PREFIX_V6
    prefix = min(client.prefixlen, limit)
    bits = int(client.network_address) >> (width - prefix)
    return bits.to_bytes(width // 8, "big") + bytes([prefix])


def _rendezvous(key: bytes, name: str) -> bytes:
    """Highest-random-weight hashing: each client network ranks the tied edges in its
    own stable order, and losing an edge moves only the clients that ranked it first."""
    return hashlib.blake2b(key + name.encode(), digest_size=8).digest()
