"""The fleet file: its schema as frozen dataclasses, and loading with validation.

Every process of a fleet reads the same `fleet.toml`. A mistake in it must stop the
process before it serves anything, with a message that names the file, the table and
the key, so `ConfigError` carries all three and the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "OBJECT_SHARE_OF_CACHE",
    "ConfigError",
    "EdgeConfig",
    "Fleet",
    "GeoConfig",
    "PurgeApiConfig",
    "Region",
    "SecurityConfig",
    "Service",
    "ShieldConfig",
    "TokenConfig",
    "load_fleet",
    "node_secret",
    "object_limit",
    "parse_fleet",
    "parse_size",
    "split_host_port",
]


class ConfigError(Exception):
    """A fleet file that cannot be used, with the place of the mistake."""

    def __init__(self, source: str, where: str, message: str) -> None:
        self.source = source
        self.where = where
        self.message = message
        super().__init__(f"{source}: {where}: {message}" if where else f"{source}: {message}")


_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as "512MiB", "1GiB", "10MB".

    Raises ValueError with the reason for anything else.
    """
    if isinstance(value, bool):
        raise ValueError('expected a size such as 536870912 or "512MiB"')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError('expected a size such as 536870912 or "512MiB"')
    match = _SIZE_RE.match(value)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(
            f"{value!r} is not a size (use bytes or units B, KiB, MiB, GiB, KB, MB, GB)"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def split_host_port(value: str) -> tuple[str, int]:
    """("127.0.0.1", 8080) from "127.0.0.1:8080"; "[::1]:53" gives ("::1", 53).

    Raises ValueError when the text is not host:port with a port in 0-65535.
    """
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
    else:
        host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{value!r} is not host:port")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{value!r}: port out of range")
    return host, port


@dataclass(frozen=True)
class Region:
    """A place in the world where edges live, and the client networks it serves."""

    name: str
    latitude: float
    longitude: float
    client_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class CacheKeyPolicy:
    """How a service turns a request URL into a cache key (cache-key hygiene)."""

    sort_query: bool = True
    drop_params: tuple[str, ...] = ("utm_*", "gclid", "fbclid")


@dataclass(frozen=True)
class Service:
    """A site the CDN serves: the hosts it answers for and the origins behind them."""

    name: str
    hosts: tuple[str, ...]
    origins: tuple[str, ...]
    cache_key: CacheKeyPolicy = field(default_factory=CacheKeyPolicy)
    negative_ttl: int = 0
    max_variants: int = 16
    default_stale_if_error: int = 0
    #: RFC 9111 4.2.4: how stale an object may be served while the origin cannot be
    #: reached (0: never); a 5xx answer still needs stale-if-error
    max_stale_when_unreachable: int = 86400
    origin_fallback: bool = True
    max_origin_connections: int = 64
    origin_queue: int = 256
    origin_queue_timeout: float = 5.0
    load_balancing: str = "round_robin"
    health_check_path: str = "/"
    health_check_interval: float = 2.0
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    #: the largest body stored (bytes, after decoding when a node decodes); a node also
    #: caps it at an eighth of its cache_size (see `NodeConfig.object_limit`)
    max_object_size: int = 1024**3
    #: store bodies whose end is the connection's close (no Content-Length, not
    #: chunked), whose truncation cannot be told from their end (RFC 9112 6.3 item 8)
    cache_close_delimited: bool = False


#: the share of a node's cache_size one object may take at most (so at least this many
#: objects of the largest size fit, and one fill cannot evict the whole cache)
OBJECT_SHARE_OF_CACHE = 8


def object_limit(service: Service, cache_size: int) -> int:
    """The largest body a node with `cache_size` bytes stores (or decodes) for `service`."""
    return max(1, min(service.max_object_size, cache_size // OBJECT_SHARE_OF_CACHE))


@dataclass(frozen=True)
class NodeConfig:
    """What edges and shields share: where they listen and where they keep objects."""

    name: str
    region: str
    listen: str
    admin_listen: str
    cache_dir: str
    cache_size: int
    memory_size: int = 64 * 1024**2
    workers: int = 1
    #: client connections the node holds at once (all workers together); more: 503
    max_connections: int = 4096
    #: seconds from the first byte of a request to the end of its head
    head_timeout: float = 10.0
    #: seconds an idle client connection (no request under way) is kept open
    keepalive_timeout: float = 20.0
    #: bytes per second the background scrubber re-reads to verify body checksums (0: off)
    scrub_rate: int = 8 * 1024**2
    #: the client-facing HTTP/1.1 server: "httptools" (our own) or "aiohttp" (kept for
    #: one release, to work around a fault of the new one)
    front: str = "httptools"
    #: bytes of a request head (request line and fields), at most; more: 400 and close
    max_head_size: int = 32 * 1024
    #: header fields of a request, at most; more: 400 and close
    max_header_fields: int = 100
    #: seconds an upload may pause between body bytes; then 408 (or a cut) and close
    body_timeout: float = 60.0
    #: seconds a client may leave its answer unread; then the connection is cut
    send_timeout: float = 60.0

    @property
    def listen_host(self) -> str:
        """The host part of `listen`."""
        return split_host_port(self.listen)[0]

    @property
    def listen_port(self) -> int:
        """The port part of `listen`."""
        return split_host_port(self.listen)[1]

    @property
    def admin_url(self) -> str:
        """Base URL of the node's admin listener."""
        host, port = split_host_port(self.admin_listen)
        return f"http://{_url_host(host)}:{port}"

    @property
    def url(self) -> str:
        """Base URL of the node's traffic listener."""
        host, port = split_host_port(self.listen)
        return f"http://{_url_host(host)}:{port}"


@dataclass(frozen=True)
class ShieldConfig(NodeConfig):
    """A shield node: the tier between the edges and the origins."""


@dataclass(frozen=True)
class EdgeConfig(NodeConfig):
    """An edge node: what users reach; `public_address` is what GeoDNS answers."""

    public_address: str = ""


@dataclass(frozen=True)
class TokenConfig:
    """A purge token: its SHA-256 (hex) and the services it may purge."""

    name: str
    sha256: str
    services: tuple[str, ...]


@dataclass(frozen=True)
class PurgeApiConfig:
    """The purge API service."""

    listen: str
    data_dir: str
    tokens: tuple[TokenConfig, ...] = ()
    rate_limit_per_minute: int = 600
    max_items: int = 1000

    @property
    def url(self) -> str:
        """Base URL of the API."""
        host, port = split_host_port(self.listen)
        return f"http://{_url_host(host)}:{port}"


@dataclass(frozen=True)
class CoverageZone:
    """An override: clients in `network` go to `region`, whatever the DB says."""

    network: str
    region: str


@dataclass(frozen=True)
class Nameserver:
    """One of the zone's NS targets and the addresses it answers on (glue)."""

    name: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class GeoConfig:
    """The GeoDNS service."""

    dns_listen: str
    http_listen: str
    zone: str
    mmdb: str = ""
    ttl: int = 30
    answer_count: int = 1
    tie_distance_km: float = 50.0
    default_region: str = ""
    health_interval: float = 1.0
    coverage_zones: tuple[CoverageZone, ...] = ()
    #: the zone's NS set; empty: one NS, ns1.<zone>, at the host of dns_listen
    nameservers: tuple[Nameserver, ...] = ()


@dataclass(frozen=True)
class SecurityConfig:
    """Where the shared node secret comes from, and whom a node believes."""

    node_secret_env: str = "EDGESHIELD_NODE_SECRET"
    #: CIDR networks of proxies in front of the nodes (a load balancer) whose
    #: forwarding fields (X-Forwarded-For, Forwarded, X-Real-IP, ...) are kept; from
    #: anyone else they are dropped and rewritten. Our own edges prove themselves to
    #: shields with a token derived from the node secret and need no entry here.
    trusted_proxies: tuple[str, ...] = ()
    #: store answers to requests that carried Cookie or Authorization on a heuristic
    #: lifetime (Last-Modified only); off: such answers need explicit freshness
    heuristic_freshness_with_credentials: bool = False


@dataclass(frozen=True)
class Fleet:
    """A whole fleet as one value: what every process of it reads."""

    source: str
    regions: tuple[Region, ...] = ()
    services: tuple[Service, ...] = ()
    shields: tuple[ShieldConfig, ...] = ()
    edges: tuple[EdgeConfig, ...] = ()
    purge_api: PurgeApiConfig | None = None
    geo: GeoConfig | None = None
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def edge(self, name: str) -> EdgeConfig:
        """The edge called `name`; ConfigError if there is none."""
        for edge in self.edges:
            if edge.name == name:
                return edge
        raise ConfigError(self.source, "[[edges]]", f"no edge named {name!r}")

    def shield(self, name: str) -> ShieldConfig:
        """The shield called `name`; ConfigError if there is none."""
        for shield in self.shields:
            if shield.name == name:
                return shield
        raise ConfigError(self.source, "[[shields]]", f"no shield named {name!r}")

    def region(self, name: str) -> Region:
        """The region called `name`; ConfigError if there is none."""
        for region in self.regions:
            if region.name == name:
                return region
        raise ConfigError(self.source, "[[regions]]", f"no region named {name!r}")

    def service(self, name: str) -> Service | None:
        """The service called `name`, or None."""
        for service in self.services:
            if service.name == name:
                return service
        return None

    @property
    def nodes(self) -> tuple[NodeConfig, ...]:
        """Every caching node, shields first (the order purges reach them)."""
        return (*self.shields, *self.edges)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


T = TypeVar("T")


class _Table:
    """One TOML table being read, which knows its own place for error messages."""

    def __init__(self, source: str, where: str, data: object) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(source, where, "expected a table")
        self.source = source
        self.where = where
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        where = f"{self.where} key {key!r}" if self.where else f"top-level key {key!r}"
        return ConfigError(self.source, where, message)

    def get(
        self,
        key: str,
        kind: type[T] | tuple[type, ...],
        default: T | None = None,
        *,
        required: bool = False,
    ) -> T:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.error(key, "is required")
            return default  # type: ignore[return-value]
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {_kind_name(kinds)}, got {type(value).__name__}")
        return value  # type: ignore[return-value]

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(key, str, default, required=required)
        if required and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def strings(
        self, key: str, default: tuple[str, ...] = (), *, required: bool = False
    ) -> tuple[str, ...]:
        value = self.get(key, list, None, required=required)
        if value is None:
            return default
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(key, f"item {index} must be a non-empty string")
        return tuple(value)

    def address(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(key, str, default, required=required)
        if value is None:
            return ""
        try:
            split_host_port(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        return value

    def size(self, key: str, default: int, *, required: bool = False) -> int:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.error(key, "is required")
            return default
        try:
            return parse_size(self.data[key])
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def number(self, key: str, default: float, *, minimum: float | None = None) -> float:
        value = self.get(key, float, default)
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum:g}")
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self.get(key, int, default)
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}")
        return value

    def tables(self, key: str, label: str) -> list[_Table]:
        self.used.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise ConfigError(self.source, label, "expected an array of tables ([[...]])")
        return [_Table(self.source, f"{label} #{i + 1}", item) for i, item in enumerate(value)]

    def table(self, key: str, label: str) -> _Table | None:
        self.used.add(key)
        if key not in self.data:
            return None
        return _Table(self.source, label, self.data[key])

    def named(self) -> _Table:
        """Refine `where` with the entry's name once it is known."""
        name = self.data.get("name")
        if isinstance(name, str) and name:
            self.where = f"{self.where} ({name!r})"
        return self

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "is not a known key")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "an array",
        dict: "a table",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file; ConfigError names the file, table and key."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    return parse_fleet(text, source)


def parse_fleet(text: str, source: str = "fleet.toml") -> Fleet:
    """Validate the text of a fleet file; `source` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    root = _Table(source, "", data)

    regions = [_region(t.named()) for t in root.tables("regions", "[[regions]]")]
    services = [_service(t.named()) for t in root.tables("services", "[[services]]")]
    shields = [
        _node(t.named(), ShieldConfig, "shield") for t in root.tables("shields", "[[shields]]")
    ]
    edges = [_node(t.named(), EdgeConfig, "edge") for t in root.tables("edges", "[[edges]]")]
    purge_table = root.table("purge_api", "[purge_api]")
    purge_api = _purge_api(purge_table) if purge_table else None
    geo_table = root.table("geo", "[geo]")
    geo = _geo(geo_table) if geo_table else None
    security_table = root.table("security", "[security]")
    security = SecurityConfig()
    if security_table:
        proxies = security_table.strings("trusted_proxies")
        for network in proxies:
            _check_network(security_table, "trusted_proxies", network)
        security = SecurityConfig(
            node_secret_env=security_table.text("node_secret_env", "EDGESHIELD_NODE_SECRET"),
            trusted_proxies=proxies,
            heuristic_freshness_with_credentials=security_table.get(
                "heuristic_freshness_with_credentials", bool, False
            ),
        )
        security_table.reject_unknown()
    root.reject_unknown()

    fleet = Fleet(
        source=source,
        regions=tuple(regions),
        services=tuple(services),
        shields=tuple(shields),
        edges=tuple(edges),
        purge_api=purge_api,
        geo=geo,
        security=security,
    )
    _check_references(fleet)
    return fleet


def _region(t: _Table) -> Region:
    name = t.text("name", required=True)
    latitude = t.number("latitude", float("nan"))
    longitude = t.number("longitude", float("nan"))
    if "latitude" not in t.data:
        raise t.error("latitude", "is required")
    if "longitude" not in t.data:
        raise t.error("longitude", "is required")
    if not -90 <= latitude <= 90:
        raise t.error("latitude", "must be between -90 and 90")
    if not -180 <= longitude <= 180:
        raise t.error("longitude", "must be between -180 and 180")
    networks = t.strings("client_networks")
    for network in networks:
        _check_network(t, "client_networks", network)
    t.reject_unknown()
    return Region(name, latitude, longitude, networks)


def _check_network(t: _Table, key: str, network: str) -> None:
    try:
        ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise t.error(key, f"{network!r} is not a CIDR network") from None


def _service(t: _Table) -> Service:
    name = t.text("name", required=True)
    hosts = t.strings("hosts", required=True)
    if not hosts:
        raise t.error("hosts", "must list at least one host")
    hosts = tuple(h.lower() for h in hosts)
    origins = t.strings("origins", required=True)
    if not origins:
        raise t.error("origins", "must list at least one origin URL")
    for origin in origins:
        if not re.match(r"^https?://[^/\s]+/?$", origin):
            raise t.error("origins", f"{origin!r} is not an origin URL like http://host:port")
    key_table = t.table("cache_key", f"{t.where} cache_key")
    cache_key = CacheKeyPolicy()
    if key_table:
        cache_key = CacheKeyPolicy(
            sort_query=key_table.get("sort_query", bool, True),
            drop_params=key_table.strings("drop_params", CacheKeyPolicy().drop_params),
        )
        key_table.reject_unknown()
    policy = t.text("load_balancing", "round_robin")
    if policy not in ("round_robin", "least_outstanding"):
        raise t.error("load_balancing", 'must be "round_robin" or "least_outstanding"')
    service = Service(
        name=name,
        hosts=hosts,
        origins=tuple(o.rstrip("/") for o in origins),
        cache_key=cache_key,
        negative_ttl=t.integer("negative_ttl", 0, minimum=0),
        max_variants=t.integer("max_variants", 16, minimum=1),
        default_stale_if_error=t.integer("default_stale_if_error", 0, minimum=0),
        max_stale_when_unreachable=t.integer("max_stale_when_unreachable", 86400, minimum=0),
        origin_fallback=t.get("origin_fallback", bool, True),
        max_origin_connections=t.integer("max_origin_connections", 64, minimum=1),
        origin_queue=t.integer("origin_queue", 256, minimum=0),
        origin_queue_timeout=t.number("origin_queue_timeout", 5.0, minimum=0),
        load_balancing=policy,
        health_check_path=t.text("health_check_path", "/"),
        health_check_interval=t.number("health_check_interval", 2.0, minimum=0.05),
        connect_timeout=t.number("connect_timeout", 2.0, minimum=0.01),
        read_timeout=t.number("read_timeout", 30.0, minimum=0.01),
        max_object_size=t.size("max_object_size", 1024**3),
        cache_close_delimited=t.get("cache_close_delimited", bool, False),
    )
    if service.max_object_size < 1:
        raise t.error("max_object_size", "must be at least 1 byte")
    if not service.health_check_path.startswith("/"):
        raise t.error("health_check_path", "must start with /")
    t.reject_unknown()
    return service


N = TypeVar("N", ShieldConfig, EdgeConfig)

#: the client-facing servers a node can run (`front` in a node's table)
FRONTS = ("httptools", "aiohttp")


def _workers(t: _Table) -> int:
    """`workers`: a number, or "auto" (the default): one process per core, as nginx's
    `worker_processes auto`."""
    value = t.get("workers", (int, str), "auto")
    if isinstance(value, str):
        if value != "auto":
            raise t.error("workers", 'must be a number or "auto"')
        return os.cpu_count() or 1
    if value < 1:
        raise t.error("workers", "must be at least 1")
    return value


def _node(t: _Table, cls: Callable[..., N], role: str) -> N:
    name = t.text("name", required=True)
    kwargs: dict[str, Any] = dict(
        name=name,
        region=t.text("region", required=True),
        listen=t.address("listen", required=True),
        admin_listen=t.address("admin_listen", required=True),
        cache_dir=t.text("cache_dir", required=True),
        cache_size=t.size("cache_size", 0, required=True),
        memory_size=t.size("memory_size", 64 * 1024**2),
        workers=_workers(t),
        max_connections=t.integer("max_connections", 4096, minimum=1),
        head_timeout=t.number("head_timeout", 10.0, minimum=0.1),
        keepalive_timeout=t.number("keepalive_timeout", 20.0, minimum=0.1),
        scrub_rate=t.size("scrub_rate", 8 * 1024**2),
        front=t.text("front", "httptools"),
        max_head_size=t.size("max_head_size", 32 * 1024),
        max_header_fields=t.integer("max_header_fields", 100, minimum=1),
        body_timeout=t.number("body_timeout", 60.0, minimum=0.1),
        send_timeout=t.number("send_timeout", 60.0, minimum=0.1),
    )
    if kwargs["front"] not in FRONTS:
        raise t.error("front", f"must be one of {', '.join(FRONTS)}")
    if kwargs["max_head_size"] < 1024:
        raise t.error("max_head_size", "must be at least 1KiB")
    if kwargs["cache_size"] < 1024 * 1024:
        raise t.error("cache_size", "must be at least 1MiB")
    if kwargs["max_connections"] < kwargs["workers"]:
        raise t.error("max_connections", "must be at least workers (each worker takes a share)")
    for key in ("head_timeout", "keepalive_timeout", "body_timeout", "send_timeout"):
        if not math.isfinite(kwargs[key]):
            raise t.error(key, "must be a finite number of seconds")
    if role == "edge":
        default_public = split_host_port(kwargs["listen"])[0]
        public = t.text("public_address", default_public)
        try:
            ipaddress.ip_address(public)
        except ValueError:
            raise t.error("public_address", f"{public!r} is not an IP address") from None
        kwargs["public_address"] = public
    t.reject_unknown()
    return cls(**kwargs)


def _purge_api(t: _Table) -> PurgeApiConfig:
    tokens = []
    for token_table in t.tables("tokens", "[purge_api] tokens"):
        token_table.named()
        digest = token_table.text("sha256", required=True).lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise token_table.error("sha256", "must be 64 hex digits (the SHA-256 of the token)")
        tokens.append(
            TokenConfig(
                name=token_table.text("name", required=True),
                sha256=digest,
                services=token_table.strings("services", required=True),
            )
        )
        token_table.reject_unknown()
    config = PurgeApiConfig(
        listen=t.address("listen", required=True),
        data_dir=t.text("data_dir", required=True),
        tokens=tuple(tokens),
        rate_limit_per_minute=t.integer("rate_limit_per_minute", 600, minimum=1),
        max_items=t.integer("max_items", 1000, minimum=1),
    )
    t.reject_unknown()
    return config


def _geo(t: _Table) -> GeoConfig:
    zones = []
    for zone_table in t.tables("coverage_zones", "[geo] coverage_zones"):
        network = zone_table.text("network", required=True)
        _check_network(zone_table, "network", network)
        zones.append(CoverageZone(network=network, region=zone_table.text("region", required=True)))
        zone_table.reject_unknown()
    zone = t.text("zone", required=True).lower().rstrip(".")
    if not zone:
        raise t.error("zone", "must not be empty")
    nameservers = []
    for ns_table in t.tables("nameservers", "[geo] nameservers"):
        ns_name = ns_table.text("name", required=True).lower().rstrip(".")
        if not re.fullmatch(
            r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+", ns_name
        ):
            raise ns_table.error("name", f"{ns_name!r} is not a host name")
        addresses = ns_table.strings("addresses")
        for address in addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ns_table.error("addresses", f"{address!r} is not an IP address") from None
        if (ns_name == zone or ns_name.endswith("." + zone)) and not addresses:
            raise ns_table.error(
                "addresses", "a name server inside the zone needs its addresses (glue)"
            )
        nameservers.append(Nameserver(ns_name, addresses))
        ns_table.reject_unknown()
    config = GeoConfig(
        dns_listen=t.address("dns_listen", required=True),
        http_listen=t.address("http_listen", required=True),
        zone=zone,
        mmdb=t.text("mmdb", ""),
        ttl=t.integer("ttl", 30, minimum=0),
        answer_count=t.integer("answer_count", 1, minimum=1),
        tie_distance_km=t.number("tie_distance_km", 50.0, minimum=0),
        default_region=t.text("default_region", ""),
        health_interval=t.number("health_interval", 1.0, minimum=0.05),
        coverage_zones=tuple(zones),
        nameservers=tuple(nameservers),
    )
    t.reject_unknown()
    return config


def _check_references(fleet: Fleet) -> None:
    """Names unique, and every reference to a region or service resolves."""
    src = fleet.source
    _unique(src, "[[regions]]", [r.name for r in fleet.regions])
    _unique(src, "[[services]]", [s.name for s in fleet.services])
    _unique(src, "[[shields]]", [n.name for n in fleet.shields])
    _unique(src, "[[edges]]", [n.name for n in fleet.edges])
    _unique(src, "[[shields]] and [[edges]]", [n.name for n in fleet.nodes])
    region_names = {r.name for r in fleet.regions}
    service_names = {s.name for s in fleet.services}
    seen_hosts: dict[str, str] = {}
    for service in fleet.services:
        for host in service.hosts:
            if host in seen_hosts:
                raise ConfigError(
                    src,
                    f"[[services]] ({service.name!r}) key 'hosts'",
                    f"{host!r} is already a host of service {seen_hosts[host]!r}",
                )
            seen_hosts[host] = service.name
    listens: dict[str, str] = {}
    for table, nodes in (("[[shields]]", fleet.shields), ("[[edges]]", fleet.edges)):
        for node in nodes:
            if node.region not in region_names:
                raise ConfigError(
                    src, f"{table} ({node.name!r}) key 'region'", f"no region named {node.region!r}"
                )
            for key in ("listen", "admin_listen"):
                address = getattr(node, key)
                if not address.endswith(":0") and address in listens:
                    raise ConfigError(
                        src,
                        f"{table} ({node.name!r}) key {key!r}",
                        f"{address} is already used by {listens[address]}",
                    )
                listens[address] = f"{node.name}.{key}"
    if fleet.purge_api:
        for token in fleet.purge_api.tokens:
            for service_name in token.services:
                if service_name != "*" and service_name not in service_names:
                    raise ConfigError(
                        src,
                        f"[purge_api] tokens ({token.name!r}) key 'services'",
                        f"no service named {service_name!r}",
                    )
    if fleet.geo:
        for zone in fleet.geo.coverage_zones:
            if zone.region not in region_names:
                raise ConfigError(
                    src, "[geo] coverage_zones key 'region'", f"no region named {zone.region!r}"
                )
        if fleet.geo.default_region and fleet.geo.default_region not in region_names:
            raise ConfigError(
                src, "[geo] key 'default_region'", f"no region named {fleet.geo.default_region!r}"
            )


def _unique(source: str, table: str, names: list[str]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise ConfigError(
                source, f"{table} #{index + 1} key 'name'", f"the name {name!r} is used twice"
            )
        seen.add(name)


def node_secret(fleet: Fleet, environ: Mapping[str, str] | None = None) -> str:
    """The shared node secret: the value of the variable `[security] node_secret_env` names.

    Empty when unset; each caller decides whether that is fatal (a node, the purge API)
    or only a warning (geo). The secret lives in the environment, never in the fleet
    file, so the file can be committed and rendered by Terraform.
    """
    env = os.environ if environ is None else environ
    return env.get(fleet.security.node_secret_env, "")
