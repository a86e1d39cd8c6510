"""The nearest-edge choice over real places: distances, health, ties, zones, defaults."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from geo.choice import Chooser, Location, Placement, Site, great_circle_km

# Edge regions at real data-centre cities (latitude, longitude in degrees).
REGIONS = {
    "fra": (50.11, 8.68),  # Frankfurt
    "nyc": (40.71, -74.01),  # New York
    "gru": (-23.55, -46.63),  # São Paulo
    "nrt": (35.68, 139.69),  # Tokyo
    "sin": (1.35, 103.82),  # Singapore
    "syd": (-33.87, 151.21),  # Sydney
}

# Client cities and the region whose edge is nearest by great circle.
CITIES = [
    ("London", 51.51, -0.13, "fra"),
    ("Paris", 48.86, 2.35, "fra"),
    ("Moscow", 55.76, 37.62, "fra"),
    ("Reykjavik", 64.15, -21.94, "fra"),
    ("Boston", 42.36, -71.06, "nyc"),
    ("Chicago", 41.88, -87.63, "nyc"),
    ("Los Angeles", 34.05, -118.24, "nyc"),
    ("Buenos Aires", -34.60, -58.38, "gru"),
    ("Lima", -12.05, -77.04, "gru"),
    ("Cape Town", -33.92, 18.42, "gru"),
    ("Seoul", 37.57, 126.98, "nrt"),
    ("Honolulu", 21.31, -157.86, "nrt"),
    ("Jakarta", -6.21, 106.85, "sin"),
    ("Mumbai", 19.08, 72.88, "sin"),
    ("Bangkok", 13.76, 100.50, "sin"),
    ("Auckland", -36.85, 174.76, "syd"),
    ("Perth", -31.95, 115.86, "syd"),
]

ALL = frozenset(REGIONS)


def placements() -> list[Placement]:
    return [Placement(name, lat, lon) for name, (lat, lon) in REGIONS.items()]


def sites(extra: dict[str, str] | None = None) -> list[Site]:
    """One edge per region, named after it, plus `extra` edges (name → region)."""
    chosen = {name: name for name in REGIONS} | (extra or {})
    return [
        Site(name, region, *REGIONS[region], address=f"192.0.2.{i + 1}")
        for i, (name, region) in enumerate(sorted(chosen.items()))
    ]


def client(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        ((51.51, -0.13), (48.86, 2.35), 344),  # London - Paris
        ((40.71, -74.01), (51.51, -0.13), 5570),  # New York - London
        ((-33.87, 151.21), (35.68, 139.69), 7820),  # Sydney - Tokyo
        ((0.0, 0.0), (0.0, 180.0), 20015),  # half the equator
        ((10.0, 20.0), (10.0, 20.0), 0),
    ],
)
def test_great_circle_distance_matches_published_figures(
    a: tuple[float, float], b: tuple[float, float], km: float
) -> None:
    assert great_circle_km(*a, *b) == pytest.approx(km, rel=0.01, abs=1)
    assert great_circle_km(*a, *b) == pytest.approx(great_circle_km(*b, *a))


@pytest.mark.parametrize(("city", "lat", "lon", "region"), CITIES, ids=[c[0] for c in CITIES])
def test_each_city_gets_its_nearest_region(city: str, lat: float, lon: float, region: str) -> None:
    chooser = Chooser(sites(), placements())
    choice = chooser.choose(client("198.51.100.7/32"), Location(lat, lon, city=city), ALL)
    assert [r.site.name for r in choice.edges] == [region]
    assert choice.basis == "geoip"
    nearest = min(great_circle_km(lat, lon, *point) for point in REGIONS.values())
    assert choice.edges[0].distance_km == pytest.approx(nearest)


def test_unhealthy_nearest_edge_is_replaced_by_the_next_nearest() -> None:
    chooser = Chooser(sites(), placements())
    london = Location(51.51, -0.13)
    choice = chooser.choose(client("198.51.100.7/32"), london, ALL - {"fra"})
    assert choice.edges[0].site.name == "nyc"
    assert not choice.all_down
    back = chooser.choose(client("198.51.100.7/32"), london, ALL)
    assert back.edges[0].site.name == "fra"


def test_answer_count_lists_edges_nearest_first() -> None:
    chooser = Chooser(sites(), placements(), answer_count=3)
    choice = chooser.choose(client("198.51.100.7/32"), Location(51.51, -0.13), ALL)
    assert [r.site.name for r in choice.edges] == ["fra", "nyc", "gru"]
    assert [r.distance_km for r in choice.edges] == sorted(r.distance_km for r in choice.edges)


def test_no_healthy_edge_answers_as_if_all_were() -> None:
    chooser = Chooser(sites(), placements())
    choice = chooser.choose(client("198.51.100.7/32"), Location(51.51, -0.13), frozenset())
    assert choice.all_down
    assert choice.edges[0].site.name == "fra"


def test_edges_of_one_region_share_clients_by_network_and_stay_put() -> None:
    chooser = Chooser(sites({"fra-b": "fra", "fra-c": "fra"}), placements())
    healthy = ALL | {"fra-b", "fra-c"}
    london = Location(51.51, -0.13)
    picks = {
        n: chooser.choose(client(f"198.51.{n}.0/24"), london, healthy).edges[0].site.name
        for n in range(200)
    }
    counts = Counter(picks.values())
    assert set(counts) == {"fra", "fra-b", "fra-c"}
    assert min(counts.values()) > 200 / 3 / 2  # a spread, not all on one
    # Stable: the same network gets the same edge again, and any address in it too.
    again = chooser.choose(client("198.51.17.99/32"), london, healthy)
    assert again.edges[0].site.name == picks[17]
    # Losing one edge moves only the networks that were on it.
    without_b = healthy - {"fra-b"}
    for n, name in picks.items():
        now = chooser.choose(client(f"198.51.{n}.0/24"), london, without_b).edges[0].site.name
        if name != "fra-b":
            assert now == name
        else:
            assert now in ("fra", "fra-c")


def test_near_ties_within_tie_distance_are_spread_and_farther_edges_are_not() -> None:
    regions = [Placement("a", 50.0, 8.0), Placement("b", 50.0, 8.5), Placement("c", 40.0, -74.0)]
    edges = [
        Site("a1", "a", 50.0, 8.0, "192.0.2.1"),
        Site("b1", "b", 50.0, 8.5, "192.0.2.2"),
        Site("c1", "c", 40.0, -74.0, "192.0.2.3"),
    ]
    near = Location(50.0, 7.9)  # 7 km from a, 43 km from b
    spread = Chooser(edges, regions, tie_distance_km=50)
    firsts = {
        spread.choose(client(f"203.0.{n}.0/24"), near, {"a1", "b1", "c1"}).edges[0].site.name
        for n in range(64)
    }
    assert firsts == {"a1", "b1"}
    strict = Chooser(edges, regions, tie_distance_km=0)
    firsts = {
        strict.choose(client(f"203.0.{n}.0/24"), near, {"a1", "b1", "c1"}).edges[0].site.name
        for n in range(64)
    }
    assert firsts == {"a1"}


def test_ipv6_clients_are_spread_by_their_56() -> None:
    chooser = Chooser(sites({"fra-b": "fra"}), placements())
    healthy = ALL | {"fra-b"}
    london = Location(51.51, -0.13)
    one = chooser.choose(client("2001:db8:0:100::1/128"), london, healthy)
    same_56 = chooser.choose(client("2001:db8:0:1ff::9/128"), london, healthy)
    assert one.edges == same_56.edges
    names = {
        chooser.choose(client(f"2001:db8:{n:x}::/48"), london, healthy).edges[0].site.name
        for n in range(64)
    }
    assert names == {"fra", "fra-b"}


def test_coverage_zone_overrides_the_database_most_specific_first() -> None:
    chooser = Chooser(
        sites(),
        placements(),
        coverage_zones=[("198.51.0.0/16", "syd"), ("198.51.100.0/24", "gru")],
    )
    london = Location(51.51, -0.13)
    wide = chooser.choose(client("198.51.7.1/32"), london, ALL)
    assert (wide.basis, wide.region, wide.edges[0].site.name) == ("coverage-zone", "syd", "syd")
    assert wide.deciding_network == client("198.51.0.0/16")
    narrow = chooser.choose(client("198.51.100.1/32"), london, ALL)
    assert narrow.edges[0].site.name == "gru"
    outside = chooser.choose(client("203.0.113.1/32"), london, ALL)
    assert (outside.basis, outside.edges[0].site.name) == ("geoip", "fra")


def test_a_network_is_split_only_by_a_coverage_zone_inside_it() -> None:
    chooser = Chooser(
        sites(),
        placements(),
        coverage_zones=[
            ("198.51.0.0/16", "syd"),
            ("198.51.100.64/26", "gru"),
            ("fd00::/64", "syd"),
        ],
    )
    assert chooser.splits(client("198.51.100.0/24"))
    assert chooser.splits(client("198.51.0.0/17"))
    assert not chooser.splits(client("198.51.100.64/26"))  # the zone itself
    assert not chooser.splits(client("198.51.100.128/25"))  # beside it
    assert not chooser.splits(client("198.51.7.0/24"))  # inside the /16, which covers it all
    assert not chooser.splits(client("203.0.113.0/24"))
    assert chooser.splits(client("fd00::/56"))
    assert not chooser.splits(client("fd00:0:0:1::/64"))
    assert not Chooser(sites(), placements()).splits(client("198.51.100.0/24"))


def test_coverage_zone_region_down_goes_to_the_region_nearest_it() -> None:
    chooser = Chooser(sites(), placements(), coverage_zones=[("198.51.0.0/16", "syd")])
    choice = chooser.choose(client("198.51.7.1/32"), None, ALL - {"syd"})
    assert choice.edges[0].site.name == "sin"  # Sydney-Singapore 6,300 km; -Tokyo 7,800


def test_unknown_location_uses_the_default_region() -> None:
    chooser = Chooser(sites(), placements(), default_region="nyc")
    choice = chooser.choose(client("203.0.113.1/32"), None, ALL)
    assert (choice.basis, choice.region, choice.edges[0].site.name) == (
        "default-region",
        "nyc",
        "nyc",
    )


def test_unknown_location_without_default_spreads_over_every_edge() -> None:
    chooser = Chooser(sites(), placements())
    names = {
        chooser.choose(client(f"203.0.{n}.0/24"), None, ALL).edges[0].site.name for n in range(128)
    }
    assert names == ALL
    choice = chooser.choose(client("203.0.113.1/32"), None, ALL)
    assert choice.basis == "unknown"
    assert "no default region" in choice.reason


def test_family_limits_candidates_to_edges_with_such_an_address() -> None:
    regions = placements()
    edges = [
        Site("fra4", "fra", *REGIONS["fra"], "192.0.2.1"),
        Site("nyc6", "nyc", *REGIONS["nyc"], "2001:db8::1"),
    ]
    chooser = Chooser(edges, regions)
    london = Location(51.51, -0.13)
    both = {"fra4", "nyc6"}
    assert chooser.choose(client("198.51.100.1/32"), london, both, family=6).edges[0].site.name == (
        "nyc6"
    )
    assert chooser.choose(client("198.51.100.1/32"), london, both, family=4).edges[0].site.name == (
        "fra4"
    )
    only6 = Chooser([edges[1]], regions)
    assert only6.choose(client("198.51.100.1/32"), london, both, family=4).edges == ()


def test_reasons_say_where_the_client_is_and_why_the_edge() -> None:
    chooser = Chooser(sites(), placements())
    choice = chooser.choose(
        client("198.51.100.7/32"), Location(51.51, -0.13, country="GB", city="London"), ALL
    )
    assert "London, GB" in choice.reason
    assert "nearest healthy edge fra in fra" in choice.reason


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="default region"):
        Chooser(sites(), placements(), default_region="mars")
    with pytest.raises(ValueError, match="no region"):
        Chooser([Site("x", "mars", 0, 0, "192.0.2.1")], placements())
