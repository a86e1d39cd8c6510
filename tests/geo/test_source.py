"""The geo source contract, run against the MaxMind DB reader and the table beside it."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.config import parse_fleet
from geo.choice import Location
from geo.mmdb_build import DATABASE_TYPE, build_fleet_mmdb, write_mmdb
from geo.source import (
    GeoDatabaseError,
    GeoSource,
    MmdbSource,
    TableSource,
    location_from_record,
)

FRANKFURT = Location(50.11, 8.68, country="DE", city="Frankfurt am Main")
TOKYO = Location(35.68, 139.69, country="JP", city="Tokyo")
OSAKA = Location(34.69, 135.50, country="JP", city="Osaka")
SEATTLE = Location(47.61, -122.33, country="US", city="Seattle")

TABLE = [
    ("81.2.0.0/16", FRANKFURT),
    ("126.0.0.0/8", TOKYO),
    ("126.7.0.0/16", OSAKA),
    ("2001:db8:5ea::/48", SEATTLE),
]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.fixture(params=["table", "mmdb"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GeoSource]:
    if request.param == "table":
        yield TableSource(TABLE)
        return
    path = tmp_path / "geo.mmdb"
    write_mmdb(TABLE, path)
    mmdb = MmdbSource(str(path))
    yield mmdb
    mmdb.close()


class TestContract:
    """What every geo source must do."""

    def test_an_address_in_a_network_has_its_location(self, source: GeoSource) -> None:
        found = source.locate(ip("81.2.69.160"))
        assert found is not None
        assert found.location == FRANKFURT
        assert found.network.supernet_of(ipaddress.ip_network("81.2.69.160/32"))
        assert found.network.subnet_of(ipaddress.ip_network("81.2.0.0/16"))

    def test_the_most_specific_network_wins(self, source: GeoSource) -> None:
        inner = source.locate(ip("126.7.1.1"))
        outer = source.locate(ip("126.8.1.1"))
        assert inner is not None and inner.location == OSAKA
        assert outer is not None and outer.location == TOKYO

    def test_ipv6(self, source: GeoSource) -> None:
        found = source.locate(ip("2001:db8:5ea::1"))
        assert found is not None and found.location == SEATTLE
        assert found.network == ipaddress.ip_network("2001:db8:5ea::/48")

    @pytest.mark.parametrize("address", ["8.8.8.8", "127.0.0.1", "2001:db8:1::1", "::1"])
    def test_unknown_addresses_have_no_location(self, source: GeoSource, address: str) -> None:
        assert source.locate(ip(address)) is None

    @pytest.mark.parametrize(
        "address",
        [
            "81.2.69.160",
            "126.7.1.1",
            "126.8.1.1",
            "126.6.255.255",
            "8.8.8.8",
            "2001:db8:5ea::1",
            "2001:db8:1::1",
            "::1",
        ],
    )
    def test_an_answer_holds_for_every_address_within_its_span(
        self, source: GeoSource, address: str
    ) -> None:
        located, span = source.locate_with_span(ip(address))
        assert located == source.locate(ip(address))
        around = ipaddress.ip_network((ip(address), span), strict=False)
        width = around.max_prefixlen
        samples = [int(around.network_address), int(around.broadcast_address)]
        samples += [
            int(around.network_address) + (i * 7919 << max(0, width - span - 16))
            for i in range(1, 40)
        ]
        for value in samples:
            other = ipaddress.ip_address(value) if width == 32 else ipaddress.IPv6Address(value)
            if other not in around:
                continue
            found = source.locate(other)
            assert (found is None) == (located is None), other
            if found is not None and located is not None:
                assert (found.location, found.prefixlen) == (located.location, located.prefixlen)

    def test_a_span_stops_short_of_a_more_specific_network(self, source: GeoSource) -> None:
        # 126.8.1.1 is in 126.0.0.0/8 (Tokyo) but 126.0.0.0/12 also holds 126.7.0.0/16
        # (Osaka): the answer holds for 126.8.0.0/13 and no wider.
        located, span = source.locate_with_span(ip("126.8.1.1"))
        assert located is not None and located.location == TOKYO
        assert span == 13
        assert source.locate_with_span(ip("81.2.69.160"))[1] == 16


def test_record_in_geolite2_city_shape() -> None:
    record = {
        "city": {"geoname_id": 2925533, "names": {"de": "Frankfurt", "en": "Frankfurt am Main"}},
        "country": {"iso_code": "DE", "names": {"en": "Germany"}},
        "location": {"accuracy_radius": 20, "latitude": 50.1188, "longitude": 8.6843},
    }
    assert location_from_record(record) == Location(50.1188, 8.6843, "DE", "Frankfurt am Main")
    # Country-only records without coordinates place nothing.
    assert location_from_record({"country": {"iso_code": "DE"}}) is None
    assert location_from_record({"location": {"latitude": "x", "longitude": 1}}) is None
    assert location_from_record(None) is None


def test_fleet_database_places_client_networks_at_regions(tmp_path: Path) -> None:
    fleet = parse_fleet(
        """
[[regions]]
name = "eu"
latitude = 50.1
longitude = 8.7
client_networks = ["10.1.0.0/16", "fd00:1::/32"]
[[regions]]
name = "us"
latitude = 40.7
longitude = -74.0
client_networks = ["10.2.0.0/16"]
"""
    )
    path = tmp_path / "fleet.mmdb"
    assert build_fleet_mmdb(fleet, path) == 3
    source = MmdbSource(str(path))
    try:
        assert source.database.database_type == DATABASE_TYPE
        eu = source.locate(ip("10.1.200.3"))
        assert eu is not None and (eu.location.latitude, eu.location.city) == (50.1, "eu")
        assert eu.network == ipaddress.ip_network("10.1.0.0/16")
        v6 = source.locate(ip("fd00:1::9"))
        assert v6 is not None and v6.location.city == "eu"
        us = source.locate(ip("10.2.0.1"))
        assert us is not None and us.location.longitude == -74.0
        assert source.locate(ip("10.3.0.1")) is None
    finally:
        source.close()


def test_reload_when_the_file_changes_and_only_then(tmp_path: Path) -> None:
    path = tmp_path / "geo.mmdb"
    write_mmdb([("81.2.0.0/16", FRANKFURT)], path)
    source = MmdbSource(str(path))
    try:
        assert source.load_if_changed() is None
        write_mmdb([("81.2.0.0/16", TOKYO)], path)
        new = source.load_if_changed()
        assert new is not None
        # Until installed, lookups still use the old database.
        found = source.locate(ip("81.2.0.1"))
        assert found is not None and found.location == FRANKFURT
        source.install(new)
        found = source.locate(ip("81.2.0.1"))
        assert found is not None and found.location == TOKYO
        assert source.reloads == 1
        assert source.load_if_changed() is None
    finally:
        source.close()


def test_a_broken_replacement_keeps_the_loaded_database(tmp_path: Path) -> None:
    path = tmp_path / "geo.mmdb"
    write_mmdb([("81.2.0.0/16", FRANKFURT)], path)
    source = MmdbSource(str(path))
    try:
        broken = tmp_path / "broken"
        broken.write_bytes(b"this is not a maxmind database" * 10)
        os.replace(broken, path)
        with pytest.raises(GeoDatabaseError, match="cannot open"):
            source.load_if_changed()
        found = source.locate(ip("81.2.0.1"))
        assert found is not None and found.location == FRANKFURT
    finally:
        source.close()


def test_missing_or_broken_database_is_our_error(tmp_path: Path) -> None:
    with pytest.raises(GeoDatabaseError):
        MmdbSource(str(tmp_path / "absent.mmdb"))
    truncated = tmp_path / "truncated.mmdb"
    write_mmdb([("81.2.0.0/16", FRANKFURT)], truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(GeoDatabaseError):
        MmdbSource(str(truncated))
