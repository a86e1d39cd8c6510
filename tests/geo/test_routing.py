"""Router.answer, the DNS path's cached route: the same edges as Router.route, kept per
client /24 or /56 only where nothing inside it could route its clients apart."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from geo.choice import Chooser, Location, Placement, Site
from geo.mmdb_build import write_mmdb
from geo.routing import Answer, Router
from geo.source import MmdbSource, TableSource

EU = Placement("eu", 50.1, 8.7)
US = Placement("us", 40.7, -74.0)
AP = Placement("ap", 35.7, 139.7)
SITES = [
    Site("edge-eu", "eu", EU.latitude, EU.longitude, "192.0.2.1"),
    Site("edge-us", "us", US.latitude, US.longitude, "192.0.2.2"),
    Site("edge-ap", "ap", AP.latitude, AP.longitude, "192.0.2.3"),
    Site("edge-eu6", "eu", EU.latitude, EU.longitude, "2001:db8::1"),
]
TABLE = {
    "10.1.0.0/16": Location(EU.latitude, EU.longitude),
    "10.2.0.0/16": Location(US.latitude, US.longitude),
    "10.2.5.128/25": Location(AP.latitude, AP.longitude),  # splits 10.2.5.0/24
    "fd00:3::/32": Location(AP.latitude, AP.longitude),
}
ALL = {"edge-eu", "edge-us", "edge-ap", "edge-eu6"}


def router(zones: list[tuple[str, str]] | None = None) -> Router:
    chooser = Chooser(SITES, [EU, US, AP], coverage_zones=zones or [], default_region="us")
    return Router(chooser, TableSource(TABLE))


def answer(r: Router, client: str, family: int = 4) -> Answer:
    network = ipaddress.ip_network(client)
    return r.answer(network.version, int(network.network_address), network.prefixlen, family)


@pytest.mark.parametrize(
    "client",
    [
        "10.1.0.9/32",
        "10.2.5.1/32",
        "10.2.5.200/32",
        "10.2.5.0/24",
        "10.2.0.0/16",
        "10.0.0.0/8",
        "203.0.113.9/32",
        "fd00:3::1/128",
        "fd00:3::/56",
        "::ffff:10.1.0.9/128",
        "10.1.7.9/32",
    ],
)
@pytest.mark.parametrize("family", [4, 6])
def test_answer_is_what_route_chooses(client: str, family: int) -> None:
    r = router(zones=[("10.1.7.0/26", "ap")])
    for _ in range(2):  # worked out, then (where it may be) from the cache
        choice = r.route(ipaddress.ip_network(client), family)
        expected = Answer(tuple(e.site.address for e in choice.edges), choice.deciding_prefix)
        assert answer(r, client, family) == expected


def test_clients_of_one_24_share_one_answer() -> None:
    r = router()
    assert answer(r, "10.1.0.1/32").addresses == ("192.0.2.1",)
    assert answer(r, "10.1.0.200/32").addresses == ("192.0.2.1",)
    assert answer(r, "10.1.0.0/24").addresses == ("192.0.2.1",)
    assert r.answer_hits == 2
    assert answer(r, "10.1.0.1/32", family=6).addresses == ("2001:db8::1",)  # per family
    assert r.answer_hits == 2


@pytest.mark.parametrize("first", ["10.2.5.1/32", "10.2.5.200/32", "10.2.5.0/24"])
def test_a_database_network_inside_the_24_keeps_its_clients_apart(first: str) -> None:
    r = router()
    answer(r, first)
    assert answer(r, "10.2.5.1/32").addresses == ("192.0.2.2",)  # 10.2.0.0/16: New York
    assert answer(r, "10.2.5.200/32").addresses == ("192.0.2.3",)  # 10.2.5.128/25: Tokyo
    assert answer(r, "10.2.5.0/24").addresses == ("192.0.2.2",)  # located by 10.2.5.0
    assert r.answer_hits == 0


def test_a_coverage_zone_inside_the_24_keeps_its_clients_apart() -> None:
    r = router(zones=[("10.1.7.0/26", "ap")])
    assert answer(r, "10.1.7.9/32").addresses == ("192.0.2.3",)
    assert answer(r, "10.1.7.99/32").addresses == ("192.0.2.1",)
    assert answer(r, "10.1.7.10/32").addresses == ("192.0.2.3",)
    assert r.answer_hits == 0
    # A zone that covers the whole /24 does not split it.
    r = router(zones=[("10.1.0.0/20", "ap")])
    assert answer(r, "10.1.7.9/32").addresses == ("192.0.2.3",)
    assert answer(r, "10.1.7.99/32") == Answer(("192.0.2.3",), 20)
    assert r.answer_hits == 1


def test_networks_wider_than_a_24_are_kept_each_for_itself() -> None:
    r = router()
    assert answer(r, "10.2.0.0/16").addresses == ("192.0.2.2",)
    assert answer(r, "10.0.0.0/8") == Answer(("192.0.2.2",), None)  # default region
    assert answer(r, "10.2.0.0/16").addresses == ("192.0.2.2",)
    assert r.answer_hits == 1


def test_an_ipv4_client_seen_through_ipv6_is_that_client() -> None:
    r = router()
    assert answer(r, "::ffff:10.1.0.9/128") == answer(r, "10.1.0.9/32")
    assert r.answer_hits == 1


def test_the_kept_answer_is_dropped_when_an_edge_goes_down_and_back_up() -> None:
    r = router()
    assert answer(r, "10.1.0.1/32").addresses == ("192.0.2.1",)
    assert answer(r, "10.1.0.2/32").addresses == ("192.0.2.1",)
    r.set_healthy(ALL - {"edge-eu"})
    assert answer(r, "10.1.0.3/32").addresses == ("192.0.2.2",)  # New York is next
    assert answer(r, "10.1.0.1/32").addresses == ("192.0.2.2",)
    r.set_healthy(ALL)
    assert answer(r, "10.1.0.2/32").addresses == ("192.0.2.1",)


def test_the_kept_answer_is_dropped_when_the_database_is_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "geo.mmdb"
    write_mmdb([("10.1.0.0/16", Location(EU.latitude, EU.longitude))], path)
    source = MmdbSource(str(path))
    try:
        r = Router(Chooser(SITES, [EU, US, AP], default_region="us"), source)
        assert answer(r, "10.1.0.1/32") == Answer(("192.0.2.1",), 16)
        assert answer(r, "10.1.0.2/32") == Answer(("192.0.2.1",), 16)
        assert r.answer_hits == 1
        write_mmdb([("10.1.0.0/20", Location(AP.latitude, AP.longitude))], path)
        database = source.load_if_changed()
        assert database is not None
        source.install(database)
        r.invalidate()  # what the service does after installing a new database
        assert answer(r, "10.1.0.3/32") == Answer(("192.0.2.3",), 20)
        assert answer(r, "10.1.0.1/32") == Answer(("192.0.2.3",), 20)
    finally:
        source.close()
