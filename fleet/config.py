"""The fleet file: its schema as frozen dataclasses, and loading with validation.

Every process of a fleet reads the same `fleet.toml`. A mistake in it must stop the
process before it serves anything, with a message that names the file, the table and
the key, so `ConfigError` carries all three and the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fleet.rules import TrafficRules, parse_traffic

__all__ = [
    "OBJECT_SHARE_OF_CACHE",
    "ConfigError",
    "ConfigErrors",
    "EdgeConfig",
    "Fleet",
    "GeoConfig",
    "NatsConfig",
    "PurgeApiConfig",
    "Region",
    "SecurityConfig",
    "Service",
    "ShieldConfig",
    "TokenConfig",
    "check_whole_fleet",
    "load_fleet",
    "nats_creds_file",
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

    @property
    def errors(self) -> list[ConfigError]:
        """Every mistake found (this one alone; `ConfigErrors` holds several)."""
        return [self]


class ConfigErrors(ConfigError):
    """Several mistakes in one fleet file, all reported at once (one per line)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self._errors = [one for error in errors for one in error.errors]
        first = self._errors[0]
        super().__init__(first.source, first.where, first.message)

    @property
    def errors(self) -> list[ConfigError]:
        """Every mistake found, in file order."""
        return list(self._errors)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self._errors)


_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_POWERS = {"K": "1 power", "M": "2 powers", "G": "3 powers", "T": "4 powers"}
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
    if match and match.group(2).upper() in ("K", "M", "G", "T"):
        # nginx reads "512m" as MiB, other tools as MB: refuse to guess
        number, unit = match.group(1), match.group(2).upper()
        raise ValueError(
            f"{value!r} is ambiguous: write {number + unit + 'iB'!r} ({_POWERS[unit]} of 1024, "
            f"as nginx reads {number + unit.lower()!r}) or {number + unit + 'B'!r} (of 1000)"
        )
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
    #: RFC 9111 5.2.1: obey a request's Cache-Control (no-cache, max-age, min-fresh,
    #: max-stale); off, as with Fastly and CloudFront, so reloads cannot drain the cache
    honor_request_cache_control: bool = False
    #: the least body (bytes, by Content-Length) given br/gzip variants, like nginx's
    #: gzip_min_length
    compress_min_size: int = 256
    #: RFC 8297: send a 103 with the preload Links of the stored response while the
    #: node goes upstream for it
    early_hints: bool = False
    #: fsync each object's body and index row before its fill counts it stored, so a
    #: power cut loses no object once stored (off: a body lost in a power cut is a
    #: miss, never corruption; the checksum tells them apart)
    durable_objects: bool = False
    #: traffic rules, origin groups, rate limits, the PURGE method (fleet.rules)
    traffic: TrafficRules = field(default_factory=TrafficRules)
    #: PEM certificate (chain) and key served for this service's hosts over TLS; the
    #: certificate may cover several hosts by SAN or wildcard
    tls_cert: str = ""
    tls_key: str = ""
    #: answer plain-HTTP requests with 308 to https (RFC 9110 15.4.9)
    https_redirect: bool = False
    #: Strict-Transport-Security max-age on TLS answers (RFC 6797); None: no header
    hsts_max_age: int | None = None
    #: PEM CA bundle that https origins are verified against (empty: the system store)
    origin_ca: str = ""
    #: verify https origins' certificates (turning it off is warned about by `check`)
    origin_tls_verify: bool = True

    @property
    def has_tls(self) -> bool:
        """Whether the service has a certificate to serve over TLS."""
        return bool(self.tls_cert)


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
    #: "addr:port" of the node's TLS listener (optional; empty: none)
    tls_listen: str = ""
    #: the node's own certificate and key (PEM), served on `tls_listen` when the SNI is
    #: the node's name: what edges verify a shield by, against `[security] node_ca`
    tls_cert: str = ""
    tls_key: str = ""

    @property
    def tls_url(self) -> str:
        """Base URL of the node's TLS listener ("" when it has none)."""
        if not self.tls_listen:
            return ""
        host, port = split_host_port(self.tls_listen)
        return f"https://{_url_host(host)}:{port}"

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
    #: where the JSON access log goes: "stdout", "off", or a file path (opened for
    #: append, reopened on SIGHUP); EDGESHIELD_ACCESS_LOG=0 turns it off whatever this says
    access_log: str = "stdout"

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
    #: the purge log: "sqlite" (one process, in data_dir) or "jetstream" (replicas
    #: on the NATS JetStream cluster of [nats])
    log: str = "sqlite"
    #: every replica's address when `listen` is a list (the first is `listen`);
    #: nodes and the CLI use them in turn
    replicas: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """Base URL of the API (the first replica)."""
        host, port = split_host_port(self.listen)
        return f"http://{_url_host(host)}:{port}"

    @property
    def urls(self) -> tuple[str, ...]:
        """Base URLs of every replica, the first one first."""
        urls = []
        for address in self.replicas or (self.listen,):
            host, port = split_host_port(address)
            urls.append(f"http://{_url_host(host)}:{port}")
        return tuple(urls)


@dataclass(frozen=True)
class NatsConfig:
    """The NATS JetStream cluster that holds the purge log when `[purge_api] log = "jetstream"`."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    #: the stream of purges; the acknowledgements and idempotency keys live in
    #: key-value buckets named after it
    stream: str = "edgeshield-purges"
    #: copies of the stream and buckets (Raft); 0: 3, or the number of servers if fewer
    replicas: int = 0
    #: the environment variable holding a NATS credentials file's path (never the
    #: credentials themselves in fleet.toml); empty: connect without credentials
    creds_env: str = ""

    @property
    def stream_replicas(self) -> int:
        """The replicas the stream is created with: as configured, or min(3, servers)."""
        return self.replicas or min(3, len(self.servers))


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
    #: PEM CA that node certificates are signed by; when set, edges reach shields over
    #: TLS (their `tls_listen`) and verify them against it
    node_ca: str = ""
    #: the oldest TLS version a TLS listener accepts: "1.2" or "1.3"
    tls_min_version: str = "1.2"
    #: the ALPN protocols TLS listeners offer, preferred first
    alpn: tuple[str, ...] = ("h2", "http/1.1")


#: the values `[security] alpn` may list
ALPN_PROTOCOLS = ("h2", "http/1.1")
#: the values `[security] tls_min_version` may take
TLS_VERSIONS = ("1.2", "1.3")


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
    nats: NatsConfig | None = None

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
            raise ConfigErrors([self.error(key, "is not a known key") for key in unknown])


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
    problems: list[ConfigError] = []

    def each(key: str, label: str, parse: Callable[[_Table], T]) -> list[T]:
        """Every entry of an array of tables that parses; the others' errors kept."""
        parsed = []
        try:
            tables = root.tables(key, label)
        except ConfigError as exc:
            problems.append(exc)
            return []
        for table in tables:
            try:
                parsed.append(parse(table.named()))
            except ConfigError as exc:
                problems.append(exc)
        return parsed

    def one(key: str, label: str, parse: Callable[[_Table], T]) -> T | None:
        try:
            table = root.table(key, label)
            return parse(table) if table else None
        except ConfigError as exc:
            problems.append(exc)
            return None

    regions = each("regions", "[[regions]]", _region)
    services = each("services", "[[services]]", _service)
    shields = each("shields", "[[shields]]", lambda t: _node(t, ShieldConfig, "shield"))
    edges = each("edges", "[[edges]]", lambda t: _node(t, EdgeConfig, "edge"))
    purge_api = one("purge_api", "[purge_api]", _purge_api)
    geo = one("geo", "[geo]", _geo)
    security = one("security", "[security]", _security) or SecurityConfig()
    nats = one("nats", "[nats]", _nats)
    try:
        root.reject_unknown()
    except ConfigError as exc:
        problems.append(exc)
    if purge_api is not None and purge_api.log == "jetstream" and nats is None:
        problems.append(
            ConfigError(
                source,
                "[purge_api] key 'log'",
                'log = "jetstream" needs a [nats] table with servers',
            )
        )

    fleet = Fleet(
        source=source,
        regions=tuple(regions),
        services=tuple(services),
        shields=tuple(shields),
        edges=tuple(edges),
        purge_api=purge_api,
        geo=geo,
        security=security,
        nats=nats,
    )
    # a reference to an entry that failed would only repeat its error
    complete = {
        key: len(found) == len(value) if isinstance(value := data.get(key), list) else True
        for key, found in (("regions", regions), ("services", services))
    }
    problems.extend(_check_references(fleet, complete["regions"], complete["services"]))
    if problems:
        raise ConfigErrors(problems) if len(problems) > 1 else problems[0]
    return fleet


def check_whole_fleet(fleet: Fleet) -> None:
    """What a fleet run as a whole (`check`, `up`) needs beyond a valid file: at
    least one edge and one service. (One process of a fleet, or a test, may load a
    partial file.)"""
    problems = []
    if not fleet.edges:
        problems.append(
            ConfigError(fleet.source, "[[edges]]", "the fleet has no edge: nothing would serve")
        )
    if not fleet.services:
        problems.append(
            ConfigError(fleet.source, "[[services]]", "the fleet has no service: nothing to serve")
        )
    if problems:
        raise ConfigErrors(problems) if len(problems) > 1 else problems[0]


def _security(t: _Table) -> SecurityConfig:
    proxies = t.strings("trusted_proxies")
    for network in proxies:
        _check_network(t, "trusted_proxies", network)
    security = SecurityConfig(
        node_secret_env=t.text("node_secret_env", "EDGESHIELD_NODE_SECRET"),
        trusted_proxies=proxies,
        heuristic_freshness_with_credentials=t.get(
            "heuristic_freshness_with_credentials", bool, False
        ),
        **_security_tls(t),
    )
    t.reject_unknown()
    return security


class _Problems:
    """The mistakes of one table, gathered so that all of them are reported at once."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def read(self, value: Callable[[], T]) -> T | None:
        """`value()`, or None with its mistake kept."""
        try:
            return value()
        except ConfigError as exc:
            self.found.extend(exc.errors)
            return None

    def add(self, error: ConfigError) -> None:
        """Keep a mistake found by a check of values read."""
        self.found.append(error)

    def raise_any(self) -> None:
        """Raise what was found, if anything."""
        if self.found:
            raise ConfigErrors(self.found) if len(self.found) > 1 else self.found[0]


def _region(t: _Table) -> Region:
    name = t.text("name", required=True)
    problems = _Problems()
    latitude = problems.read(lambda: t.number("latitude", float("nan")))
    longitude = problems.read(lambda: t.number("longitude", float("nan")))
    for key, value, bound in (("latitude", latitude, 90), ("longitude", longitude, 180)):
        if key not in t.data:
            problems.add(t.error(key, "is required"))
        elif value is not None and not -bound <= value <= bound:
            problems.add(t.error(key, f"must be between -{bound} and {bound}"))
    networks = problems.read(lambda: t.strings("client_networks")) or ()
    for network in networks:
        problems.read(functools.partial(_check_network, t, "client_networks", network))
    problems.read(t.reject_unknown)
    problems.raise_any()
    assert latitude is not None and longitude is not None
    return Region(name, latitude, longitude, networks)


def _check_network(t: _Table, key: str, network: str) -> None:
    try:
        parsed = ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise t.error(key, f"{network!r} is not a CIDR network") from None
    if str(parsed) != network and parsed.network_address != ipaddress.ip_address(
        network.split("/")[0]
    ):
        # 198.51.100.7/24 is either a typo for the network or for one address
        raise t.error(key, f"{network!r} has host bits set: did you mean {str(parsed)!r}?")


_ORIGIN_URL = re.compile(r"^https?://[^/\s]+/?$")


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
        if not _ORIGIN_URL.match(origin):
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
        honor_request_cache_control=t.get("honor_request_cache_control", bool, False),
        compress_min_size=t.integer("compress_min_size", 256, minimum=0),
        early_hints=t.get("early_hints", bool, False),
        durable_objects=t.get("durable_objects", bool, False),
        traffic=parse_traffic(t, _ORIGIN_URL),
        **_service_tls(t),
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


def _access_log(t: _Table) -> str:
    """`access_log`: "stdout" (the default), "off", or the path of a file."""
    value = t.text("access_log", "stdout")
    if not value.strip() or value != value.strip() or "\x00" in value:
        raise t.error("access_log", 'must be "stdout", "off" or a file path')
    if value.endswith(("/", os.sep)):
        raise t.error("access_log", "must name a file, not a directory")
    return value


def _node(t: _Table, cls: Callable[..., N], role: str) -> N:
    name = t.text("name", required=True)
    problems = _Problems()
    read = problems.read
    kwargs: dict[str, Any] = dict(
        name=name,
        region=read(lambda: t.text("region", required=True)),
        listen=read(lambda: t.address("listen", required=True)),
        admin_listen=read(lambda: t.address("admin_listen", required=True)),
        cache_dir=read(lambda: t.text("cache_dir", required=True)),
        cache_size=read(lambda: t.size("cache_size", 0, required=True)),
        memory_size=read(lambda: t.size("memory_size", 64 * 1024**2)),
        workers=read(lambda: _workers(t)),
        max_connections=read(lambda: t.integer("max_connections", 4096, minimum=1)),
        head_timeout=read(lambda: t.number("head_timeout", 10.0, minimum=0.1)),
        keepalive_timeout=read(lambda: t.number("keepalive_timeout", 20.0, minimum=0.1)),
        scrub_rate=read(lambda: t.size("scrub_rate", 8 * 1024**2)),
        front=read(lambda: t.text("front", "httptools")),
        max_head_size=read(lambda: t.size("max_head_size", 32 * 1024)),
        max_header_fields=read(lambda: t.integer("max_header_fields", 100, minimum=1)),
        body_timeout=read(lambda: t.number("body_timeout", 60.0, minimum=0.1)),
        send_timeout=read(lambda: t.number("send_timeout", 60.0, minimum=0.1)),
        access_log=read(lambda: _access_log(t)),
        **(read(lambda: _node_tls(t)) or {}),
    )
    if kwargs["front"] is not None and kwargs["front"] not in FRONTS:
        problems.add(t.error("front", f"must be one of {', '.join(FRONTS)}"))
    if kwargs["max_head_size"] is not None and kwargs["max_head_size"] < 1024:
        problems.add(t.error("max_head_size", "must be at least 1KiB"))
    if kwargs["cache_size"] is not None and kwargs["cache_size"] < 1024 * 1024:
        problems.add(t.error("cache_size", "must be at least 1MiB"))
    connections, workers = kwargs["max_connections"], kwargs["workers"]
    if connections is not None and workers is not None and connections < workers:
        problems.add(
            t.error("max_connections", "must be at least workers (each worker takes a share)")
        )
    for key in ("head_timeout", "keepalive_timeout", "body_timeout", "send_timeout"):
        if kwargs[key] is not None and not math.isfinite(kwargs[key]):
            problems.add(t.error(key, "must be a finite number of seconds"))
    if role == "edge":
        t.used.add("public_address")
        if kwargs["listen"] is not None:
            kwargs["public_address"] = read(lambda: _public_address(t, kwargs["listen"]))
    read(t.reject_unknown)
    problems.raise_any()
    return cls(**kwargs)


def _public_address(t: _Table, listen: str) -> str:
    """What GeoDNS answers for an edge: `public_address`, else the host of `listen`."""
    default_public = split_host_port(listen)[0]
    if "public_address" not in t.data and not _is_ip(default_public):
        raise t.error(
            "listen",
            f"{default_public!r} is not an IP address, and GeoDNS answers with one: "
            'listen on an address, or set public_address = "IP"',
        )
    public = t.text("public_address", default_public)
    if not _is_ip(public):
        raise t.error("public_address", f"{public!r} is not an IP address")
    return public


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _pem_pair(t: _Table) -> dict[str, Any]:
    """`tls_cert` and `tls_key`: both or neither (their files are checked by
    fleet.tls, which `edgeshield check` and every node run)."""
    cert = t.text("tls_cert", "")
    key = t.text("tls_key", "")
    if cert and not key:
        raise t.error("tls_key", "is required with tls_cert")
    if key and not cert:
        raise t.error("tls_cert", "is required with tls_key")
    return {"tls_cert": cert, "tls_key": key}


def _service_tls(t: _Table) -> dict[str, Any]:
    """A service's TLS keys (see `Service`)."""
    kwargs = _pem_pair(t)
    kwargs["https_redirect"] = t.get("https_redirect", bool, False)
    if kwargs["https_redirect"] and not kwargs["tls_cert"]:
        raise t.error("https_redirect", "needs tls_cert and tls_key (nothing serves https)")
    hsts = t.get("hsts_max_age", int, None)
    if hsts is not None:
        if hsts < 0:
            raise t.error("hsts_max_age", "must be at least 0")
        if not kwargs["tls_cert"]:
            raise t.error("hsts_max_age", "needs tls_cert and tls_key (HSTS is sent over TLS)")
    kwargs["hsts_max_age"] = hsts
    kwargs["origin_ca"] = t.text("origin_ca", "")
    kwargs["origin_tls_verify"] = t.get("origin_tls_verify", bool, True)
    return kwargs


def _node_tls(t: _Table) -> dict[str, Any]:
    """A node's TLS keys (see `NodeConfig`)."""
    kwargs = _pem_pair(t)
    kwargs["tls_listen"] = t.address("tls_listen")
    if kwargs["tls_cert"] and not kwargs["tls_listen"]:
        raise t.error("tls_cert", "needs tls_listen (the listener it is served on)")
    return kwargs


def _security_tls(t: _Table) -> dict[str, Any]:
    """`[security]`'s TLS keys (see `SecurityConfig`)."""
    version = t.text("tls_min_version", "1.2")
    if version not in TLS_VERSIONS:
        raise t.error("tls_min_version", 'must be "1.2" or "1.3"')
    alpn = t.strings("alpn", ALPN_PROTOCOLS)
    if not alpn:
        raise t.error("alpn", "must list at least one protocol")
    for name in alpn:
        if name not in ALPN_PROTOCOLS:
            raise t.error("alpn", f"{name[:20]!r} is not one of h2, http/1.1")
    if len(set(alpn)) != len(alpn):
        raise t.error("alpn", "lists a protocol twice")
    return {"node_ca": t.text("node_ca", ""), "tls_min_version": version, "alpn": alpn}


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
    replicas: tuple[str, ...] = ()
    if isinstance(t.data.get("listen"), list):
        replicas = t.strings("listen", required=True)
        if not replicas:
            raise t.error("listen", "must name at least one address")
        for address in replicas:
            try:
                split_host_port(address)
            except ValueError as exc:
                raise t.error("listen", str(exc)) from None
        if len(set(replicas)) != len(replicas):
            raise t.error("listen", "names an address twice")
        listen = replicas[0]
    else:
        listen = t.address("listen", required=True)
    log_kind = t.text("log", "sqlite")
    if log_kind not in ("sqlite", "jetstream"):
        raise t.error("log", f'must be "sqlite" or "jetstream", not {log_kind[:40]!r}')
    if len(replicas) > 1 and log_kind != "jetstream":
        # each SQLite log has one writer that knows its own purges: replicas would
        # each push only what they appended
        raise t.error("listen", 'several replicas need log = "jetstream"')
    config = PurgeApiConfig(
        listen=listen,
        data_dir=t.text("data_dir", required=True),
        tokens=tuple(tokens),
        rate_limit_per_minute=t.integer("rate_limit_per_minute", 600, minimum=1),
        max_items=t.integer("max_items", 1000, minimum=1),
        log=log_kind,
        replicas=replicas,
    )
    t.reject_unknown()
    return config


def _nats(t: _Table) -> NatsConfig:
    servers = t.strings("servers", NatsConfig.servers)
    if not servers:
        raise t.error("servers", "must name at least one server")
    for server in servers:
        if not re.fullmatch(r"(nats|tls)://[^\s/]+:[0-9]{1,5}", server):
            raise t.error("servers", f"{server[:60]!r} is not nats://host:port or tls://host:port")
    stream = t.text("stream", NatsConfig.stream)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", stream):
        raise t.error("stream", "must be 1 to 64 letters, digits, '-' or '_'")
    creds_env = t.text("creds_env", "")
    if creds_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", creds_env):
        raise t.error("creds_env", "must be the name of an environment variable")
    config = NatsConfig(
        servers=servers,
        stream=stream,
        replicas=t.integer("replicas", 0, minimum=0),
        creds_env=creds_env,
    )
    if config.replicas > 5:
        raise t.error("replicas", "JetStream allows at most 5 replicas")
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


def _check_references(
    fleet: Fleet, regions_complete: bool = True, services_complete: bool = True
) -> list[ConfigError]:
    """Names unique, no two listeners on one address, and every reference to a region
    or service resolves (unless that table had an entry in error); every mistake."""
    src = fleet.source
    problems = [
        *_unique(src, "[[regions]]", [r.name for r in fleet.regions]),
        *_unique(src, "[[services]]", [s.name for s in fleet.services]),
        *_unique(src, "[[shields]]", [n.name for n in fleet.shields]),
        *_unique(src, "[[edges]]", [n.name for n in fleet.edges]),
    ]
    if not problems:
        problems += _unique(src, "[[shields]] and [[edges]]", [n.name for n in fleet.nodes])
    region_names = {r.name for r in fleet.regions}
    service_names = {s.name for s in fleet.services}
    seen_hosts: dict[str, str] = {}
    for service in fleet.services:
        for host in service.hosts:
            if host in seen_hosts:
                problems.append(
                    ConfigError(
                        src,
                        f"[[services]] ({service.name!r}) key 'hosts'",
                        f"{host!r} is already a host of service {seen_hosts[host]!r}",
                    )
                )
            seen_hosts[host] = service.name
    for table, nodes in (("[[shields]]", fleet.shields), ("[[edges]]", fleet.edges)):
        for node in nodes:
            if regions_complete and node.region not in region_names:
                problems.append(
                    ConfigError(
                        src,
                        f"{table} ({node.name!r}) key 'region'",
                        f"no region named {node.region!r}",
                    )
                )
    problems += _check_listens(fleet)
    problems += _check_tls_references(fleet)
    if fleet.purge_api and services_complete:
        for token in fleet.purge_api.tokens:
            for service_name in token.services:
                if service_name != "*" and service_name not in service_names:
                    problems.append(
                        ConfigError(
                            src,
                            f"[purge_api] tokens ({token.name!r}) key 'services'",
                            f"no service named {service_name!r}",
                        )
                    )
    if fleet.geo and regions_complete:
        for zone in fleet.geo.coverage_zones:
            if zone.region not in region_names:
                problems.append(
                    ConfigError(
                        src, "[geo] coverage_zones key 'region'", f"no region named {zone.region!r}"
                    )
                )
        if fleet.geo.default_region and fleet.geo.default_region not in region_names:
            problems.append(
                ConfigError(
                    src,
                    "[geo] key 'default_region'",
                    f"no region named {fleet.geo.default_region!r}",
                )
            )
    return problems


#: Hosts that listen on every address of their family.
_WILDCARDS = {"0.0.0.0": "ipv4", "::": "ipv6", "": "any"}


def _check_tls_references(fleet: Fleet) -> list[ConfigError]:
    """A TLS listener has a certificate to serve, and with `[security] node_ca` every
    shield serves one of its own (the files themselves are checked by fleet.tls)."""
    problems = []
    for table, nodes in (("[[shields]]", fleet.shields), ("[[edges]]", fleet.edges)):
        for node in nodes:
            if node.tls_listen and not node.tls_cert and not any(s.has_tls for s in fleet.services):
                problems.append(
                    ConfigError(
                        fleet.source,
                        f"{table} ({node.name!r}) key 'tls_listen'",
                        "no certificate to serve: give a service (or this node) tls_cert and "
                        "tls_key",
                    )
                )
    if fleet.security.node_ca:
        for shield in fleet.shields:
            if not shield.tls_listen or not shield.tls_cert:
                problems.append(
                    ConfigError(
                        fleet.source,
                        f"[[shields]] ({shield.name!r}) key 'tls_listen'",
                        "[security] node_ca is set: every shield needs tls_listen, tls_cert, "
                        "tls_key",
                    )
                )
    return problems


def _check_listens(fleet: Fleet) -> list[ConfigError]:
    """Every listener of the fleet on a fixed port, and on an address no other
    listener of this machine's fleet takes (0.0.0.0:P takes every host's port P)."""
    listeners: list[tuple[str, str, str]] = []  # (where, key, address)
    for table, nodes in (("[[shields]]", fleet.shields), ("[[edges]]", fleet.edges)):
        for node in nodes:
            where = f"{table} ({node.name!r})"
            listeners += [
                (where, "listen", node.listen),
                (where, "admin_listen", node.admin_listen),
            ]
            if node.tls_listen:
                listeners.append((where, "tls_listen", node.tls_listen))
    if fleet.purge_api:
        for address in fleet.purge_api.replicas or (fleet.purge_api.listen,):
            listeners.append(("[purge_api]", "listen", address))
    if fleet.geo:
        listeners += [
            ("[geo]", "dns_listen", fleet.geo.dns_listen),
            ("[geo]", "http_listen", fleet.geo.http_listen),
        ]
    problems = []
    taken: list[tuple[str, int, str]] = []  # (host, port, who)
    for where, key, address in listeners:
        host, port = split_host_port(address)
        if port == 0:
            problems.append(
                ConfigError(
                    fleet.source,
                    f"{where} key {key!r}",
                    f"{address}: port 0 means any free port, but the fleet must know it",
                )
            )
            continue
        for other_host, other_port, who in taken:
            if port == other_port and _overlap(host, other_host):
                problems.append(
                    ConfigError(
                        fleet.source,
                        f"{where} key {key!r}",
                        f"{address} is already used by {who}",
                    )
                )
                break
        name = where.split("'")[1] if "'" in where else where.strip("[]")
        taken.append((host, port, f"{name}.{key}"))
    return problems


def _overlap(a: str, b: str) -> bool:
    """Whether two listen hosts take the same address (a wildcard takes its family)."""
    if a == b:
        return True
    for wild, other in ((a, b), (b, a)):
        family = _WILDCARDS.get(wild)
        if family == "any" or (family == "ipv4" and ":" not in other and other != "::"):
            return True
        if family == "ipv6":
            return True  # a dual-stack socket on :: takes IPv4 too (Linux default)
    return False


def _unique(source: str, table: str, names: list[str]) -> list[ConfigError]:
    seen: set[str] = set()
    problems = []
    for index, name in enumerate(names):
        if name in seen:
            problems.append(
                ConfigError(
                    source, f"{table} #{index + 1} key 'name'", f"the name {name!r} is used twice"
                )
            )
        seen.add(name)
    return problems


def node_secret(fleet: Fleet, environ: Mapping[str, str] | None = None) -> str:
    """The shared node secret: the value of the variable `[security] node_secret_env` names.

    Empty when unset; each caller decides whether that is fatal (a node, the purge API)
    or only a warning (geo). The secret lives in the environment, never in the fleet
    file, so the file can be committed and rendered by Terraform.
    """
    env = os.environ if environ is None else environ
    return env.get(fleet.security.node_secret_env, "")


def nats_creds_file(fleet: Fleet, environ: Mapping[str, str] | None = None) -> str | None:
    """The NATS credentials file's path from the variable `[nats] creds_env` names, or None.

    Like the node secret, credentials never sit in the fleet file; only the name of
    the variable that points at them does.
    """
    if fleet.nats is None or not fleet.nats.creds_env:
        return None
    env = os.environ if environ is None else environ
    return env.get(fleet.nats.creds_env) or None
