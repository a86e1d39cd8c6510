"""Where an address is: the geo source seam, a MaxMind DB behind it and a table beside it.

`MmdbSource` reads GeoLite2-City, DB-IP City Lite and our own simulated databases
(they share the record shape: `location.latitude/longitude`, `country.iso_code`,
`city.names.en`), memory-mapped. It reloads when the file changes: the blocking part
(stat and open) is `load_if_changed`, which the server runs in an executor; the swap
(`install`) happens on the event loop between two lookups, so no query is dropped.
`TableSource` answers from an in-memory table with the same contract, for tests and
for measuring the choice without the database.

Both also say how far an answer holds (`locate_with_span`): the prefix length of the
network around the address inside which every address gets the same answer, so a
cache above them can answer a whole network from one lookup.

maxminddb's own exceptions become `GeoDatabaseError` here and go no further.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import maxminddb

from geo.choice import IPAddress, IPNetwork, Location

__all__ = [
    "GeoDatabaseError",
    "GeoSource",
    "Located",
    "MmdbDatabase",
    "MmdbSource",
    "TableSource",
    "location_from_record",
]


class GeoDatabaseError(Exception):
    """A GeoIP database that cannot be opened or read."""


@dataclass(frozen=True, slots=True)
class Located:
    """A location, and the database network it holds for (`prefixlen` bits of `address`)."""

    location: Location
    address: IPAddress
    prefixlen: int

    @property
    def network(self) -> IPNetwork:
        """The database network that holds `address`."""
        return ipaddress.ip_network((self.address, self.prefixlen), strict=False)


class GeoSource(Protocol):
    """Anything that can place an address on the map."""

    def locate(self, address: IPAddress) -> Located | None:
        """Where `address` is, or None when the source does not know."""
        ...

    def locate_with_span(self, address: IPAddress) -> tuple[Located | None, int]:
        """`locate(address)`, and the prefix length of the network around `address`
        in which every address gets the same answer (known or not)."""
        ...


_NUMBERS = (float, int)


def location_from_record(record: object) -> Location | None:
    """A Location from a GeoLite2-City shaped record; None without coordinates."""
    # Plain dicts are what maxminddb returns; checking for them (not Mapping, an
    # abstract class) keeps this off the profile of a DNS answer.
    if not isinstance(record, dict):
        return None
    place = record.get("location")
    if not isinstance(place, dict):
        return None
    latitude = place.get("latitude")
    longitude = place.get("longitude")
    if not isinstance(latitude, _NUMBERS) or not isinstance(longitude, _NUMBERS):
        return None
    return Location(
        float(latitude),
        float(longitude),
        country=_text(record, "country", "iso_code"),
        city=_english_name(record.get("city")),
    )


def _text(record: dict[str, Any], table: str, key: str) -> str:
    inner = record.get(table)
    if isinstance(inner, dict):
        value = inner.get(key)
        if isinstance(value, str):
            return value
    return ""


def _english_name(table: object) -> str:
    if isinstance(table, dict):
        names = table.get("names")
        if isinstance(names, dict):
            name = names.get("en")
            if isinstance(name, str):
                return name
    return ""


def _fingerprint(path: str) -> tuple[int, int, int]:
    """What tells a changed file: inode (a rename replaced it), size and mtime."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise GeoDatabaseError(f"{path}: {exc.strerror or exc}") from None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _open_reader(path: str) -> maxminddb.Reader:
    # MODE_MMAP_EXT is the C extension over a memory map; MODE_MMAP is the
    # pure-Python reader over the same map, used when the extension is not built.
    for mode in (maxminddb.MODE_MMAP_EXT, maxminddb.MODE_MMAP):
        try:
            return maxminddb.open_database(path, mode)
        except ValueError:
            continue  # this mode is not available in this build
        except (OSError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoDatabaseError(f"{path}: cannot open as a MaxMind DB: {exc}") from None
    raise GeoDatabaseError(f"{path}: no memory-mapped MaxMind DB reader is available")


class MmdbDatabase:
    """One opened .mmdb file, as it was when it was opened."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fingerprint = _fingerprint(path)
        self._reader = _open_reader(path)
        metadata = self._reader.metadata()
        self.database_type: str = str(metadata.database_type)
        self.build_epoch: int = int(metadata.build_epoch)
        self.ip_version: int = int(metadata.ip_version)

    def locate(self, address: IPAddress) -> Located | None:
        """Where `address` is in this database, or None."""
        return self.locate_with_span(address)[0]

    def locate_with_span(self, address: IPAddress) -> tuple[Located | None, int]:
        """Where `address` is in this database (or None), and the prefix length of
        the database network that holds it, found or not."""
        if address.version == 6 and self.ip_version == 4:
            return None, 0  # no IPv6 address is in an IPv4-only database
        try:
            record, prefix = self._reader.get_with_prefix_len(address)
        except (ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoDatabaseError(f"{self.path}: lookup of {address} failed: {exc}") from None
        # The search ends `prefix` bits down the tree, at data or at an empty record:
        # every address with the same first `prefix` bits ends at the same place.
        location = location_from_record(record)
        if location is None:
            return None, prefix
        return Located(location, address, prefix), prefix

    def close(self) -> None:
        """Unmap the file."""
        self._reader.close()


class MmdbSource:
    """A MaxMind DB file that is reopened when it changes on disk."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.database = MmdbDatabase(path)
        self.reloads = 0

    def locate(self, address: IPAddress) -> Located | None:
        """Where `address` is, from the database currently installed."""
        return self.database.locate(address)

    def locate_with_span(self, address: IPAddress) -> tuple[Located | None, int]:
        """`locate(address)` and how far the answer holds, from the database installed."""
        return self.database.locate_with_span(address)

    def load_if_changed(self) -> MmdbDatabase | None:
        """Blocking: the file reopened if it changed since it was opened, else None.

        Raises GeoDatabaseError when the new file cannot be opened; the database
        installed now stays in use.
        """
        if _fingerprint(self.path) == self.database.fingerprint:
            return None
        return MmdbDatabase(self.path)

    def install(self, database: MmdbDatabase) -> None:
        """Use `database` from now on and close the one it replaces.

        Call this from the thread that does lookups (the event loop), so no lookup
        is running on the old map when it is closed.
        """
        old, self.database = self.database, database
        self.reloads += 1
        old.close()

    def close(self) -> None:
        """Close the database."""
        self.database.close()


class TableSource:
    """Locations from a table of networks, most specific network first."""

    def __init__(self, entries: Mapping[str, Location] | Iterable[tuple[str, Location]]) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        table = [(ipaddress.ip_network(net, strict=False), loc) for net, loc in items]
        table.sort(key=lambda item: -item[0].prefixlen)
        self.entries: tuple[tuple[IPNetwork, Location], ...] = tuple(table)

    def locate(self, address: IPAddress) -> Located | None:
        """Where `address` is, or None when no network of the table holds it."""
        for network, location in self.entries:
            if network.version == address.version and address in network:
                return Located(location, address, network.prefixlen)
        return None

    def locate_with_span(self, address: IPAddress) -> tuple[Located | None, int]:
        """`locate(address)`, and the longest prefix around `address` that holds no
        other network of the table (a more specific one would answer differently)."""
        located = self.locate(address)
        span = located.prefixlen if located is not None else 0
        value = int(address)
        width = address.max_prefixlen
        for network, _ in self.entries:
            if network.version != address.version or address in network:
                continue
            # `address` and this network share `common` leading bits; a prefix of
            # `common + 1` bits around `address` is the first that leaves it out.
            common = width - (value ^ int(network.network_address)).bit_length()
            span = max(span, common + 1)
        return located, span
