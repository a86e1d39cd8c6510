"""Writing a simulated GeoIP database: each region's client networks at its coordinates.

A fleet on one machine has no real geography, so `build_fleet_mmdb` writes an .mmdb
in the GeoLite2-City record shape that places every region's `client_networks` at the
region's latitude and longitude. The server then reads it with the same code as a
real GeoLite2-City file, and the simulated fleet routes like a real one.

The file is written beside its final name and renamed into place: a reader that has
the old file memory-mapped keeps a consistent view, and a reader that reloads sees
either the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mmdb_writer import MmdbF64, MmdbU16, MMDBWriter
from netaddr import IPSet

from fleet.config import Fleet
from geo.choice import Location

__all__ = ["DATABASE_TYPE", "build_fleet_mmdb", "fleet_entries", "write_mmdb"]

DATABASE_TYPE = "edgeshield-Simulated-City"

# A simulated region is a point, but a real database says how far to trust one
# (location.accuracy_radius, km); 100 km is what GeoLite2 commonly gives a city.
_ACCURACY_RADIUS_KM = 100


def fleet_entries(fleet: Fleet) -> list[tuple[str, Location]]:
    """(network, location) for every client network of every region of `fleet`."""
    return [
        (network, Location(region.latitude, region.longitude, city=region.name))
        for region in fleet.regions
        for network in region.client_networks
    ]


def _record(location: Location) -> dict[str, object]:
    record: dict[str, object] = {
        "location": {
            "latitude": MmdbF64(location.latitude),
            "longitude": MmdbF64(location.longitude),
            "accuracy_radius": MmdbU16(_ACCURACY_RADIUS_KM),
        }
    }
    if location.city:
        record["city"] = {"names": {"en": location.city}}
    if location.country:
        record["country"] = {"iso_code": location.country}
    return record


def write_mmdb(entries: Iterable[tuple[str, Location]], output: str | Path) -> int:
    """Write an IPv6 database (IPv4 mapped in, as GeoLite2 does) holding `entries`.

    Returns the number of networks written. Raises ValueError for a bad network.
    """
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=DATABASE_TYPE,
        languages=["en"],
        description={"en": "edgeshield simulated fleet geography"},
    )
    count = 0
    for network, location in entries:
        parsed = ipaddress.ip_network(network, strict=False)
        writer.insert_network(IPSet([str(parsed)]), _record(location))
        count += 1
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        writer.to_db_file(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return count


def build_fleet_mmdb(fleet: Fleet, output: str | Path) -> int:
    """Write the simulated database of `fleet` to `output`; the number of networks."""
    return write_mmdb(fleet_entries(fleet), output)
