"""The geo service: GeoDNS over UDP and TCP, the HTTP route endpoint, health, reloads.

`GeoService` wires the pieces of `geo/` to sockets and runs the background work:
polling edge health and watching the .mmdb file. The only blocking calls it makes
(stat and open of the database file) run in the default executor, in
`_watch_database`, and the new database is installed on the event loop between two
queries, so a reload drops nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from fleet.config import Fleet, node_secret, split_host_port
from geo.dns import DnsResponder, ZoneInfo
from geo.health import HealthMonitor
from geo.http_api import make_app
from geo.metrics import GeoMetrics, metrics_view
from geo.routing import Router, chooser_from_fleet
from geo.source import GeoDatabaseError, MmdbSource
from runtime.http_errors import TerseAppRunner

__all__ = ["GeoService", "zone_from_fleet"]

log = logging.getLogger("edgeshield.geo.server")

RELOAD_CHECK_SECONDS = 1.0
# RFC 7766 section 6.2.3: servers may close idle TCP connections; a few seconds is
# the usual choice (BIND's tcp-idle-timeout default is 30 s, Knot's 10 s).
TCP_IDLE_SECONDS = 10.0


def zone_from_fleet(fleet: Fleet) -> ZoneInfo:
    """The zone the fleet's GeoDNS is authoritative for."""
    geo = fleet.geo
    if geo is None:
        raise ValueError("the fleet has no [geo] table")
    host, _ = split_host_port(geo.dns_listen)
    glue: tuple[str, ...] = ()
    with contextlib.suppress(ValueError):
        if not ipaddress.ip_address(host).is_unspecified:
            glue = (host,)
    return ZoneInfo(
        origin=geo.zone,
        services=frozenset(s.name.lower() for s in fleet.services),
        ttl=geo.ttl,
        nameserver_addresses=glue,
        nameservers=tuple((ns.name, ns.addresses) for ns in geo.nameservers),
    )


class _DnsDatagrams(asyncio.DatagramProtocol):
    """UDP: one datagram, one answer."""

    def __init__(self, responder: DnsResponder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        response = self.responder.respond(data, addr[0])
        if response is not None and self.transport is not None:
            self.transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


class GeoService:
    """A running geo service for one fleet."""

    def __init__(self, fleet: Fleet, mmdb_path: str, *, secret: str | None = None) -> None:
        if fleet.geo is None:
            raise ValueError("the fleet has no [geo] table")
        self.fleet = fleet
        self.geo = fleet.geo
        self.source = MmdbSource(mmdb_path)
        self.router = Router(chooser_from_fleet(fleet), self.source)
        self.responder = DnsResponder(zone_from_fleet(fleet), self.router)
        if secret is None:
            secret = node_secret(fleet)
        self._secret = secret
        self.health = HealthMonitor(
            fleet.edges,
            secret,
            interval=self.geo.health_interval,
            on_change=lambda: self.router.set_healthy(self.health.healthy),
        )
        self.dns_address: tuple[str, int] = ("", 0)
        self.http_address: tuple[str, int] = ("", 0)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_reload_error = ""

    async def start(self) -> None:
        """Bind every listener and start the background tasks."""
        loop = asyncio.get_running_loop()
        host, port = split_host_port(self.geo.dns_listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._tcp = await asyncio.start_server(
            self._serve_tcp, host, port, family=family, reuse_address=True
        )
        bound = self._tcp.sockets[0].getsockname()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DnsDatagrams(self.responder), local_addr=(host, int(bound[1])), family=family
        )
        self._udp = transport
        self.dns_address = (host, int(bound[1]))

        http_host, http_port = split_host_port(self.geo.http_listen)
        http_socket = socket.create_server(
            (http_host, http_port),
            family=socket.AF_INET6 if ":" in http_host else socket.AF_INET,
            reuse_port=False,
        )
        http_socket.setblocking(False)
        self.http_address = (http_host, int(http_socket.getsockname()[1]))
        app = make_app(self.router, self.health)
        app.router.add_get(
            "/metrics",
            metrics_view(GeoMetrics(self.responder, self.health), lambda: self._secret),
        )
        self._http = TerseAppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._http.setup()
        await web.SockSite(self._http, http_socket).start()

        await self.health.__aenter__()
        self._spawn(self.health.run)
        self._spawn(self._watch_database)

    def _spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed", getattr(work, "__name__", work))

        self._tasks.append(asyncio.create_task(guarded()))

    async def stop(self) -> None:
        """Close the listeners and stop the background tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._tcp_writers):
                writer.close()
            await self._tcp.wait_closed()
        if self._http is not None:
            await self._http.cleanup()
        await self.health.__aexit__(None, None, None)
        self.source.close()

    async def _watch_database(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RELOAD_CHECK_SECONDS)
            try:
                database = await loop.run_in_executor(None, self.source.load_if_changed)
            except GeoDatabaseError as exc:
                if str(exc) != self._last_reload_error:
                    log.error("keeping the loaded GeoIP database: %s", exc)
                    self._last_reload_error = str(exc)
                continue
            self._last_reload_error = ""
            if database is not None:
                self.source.install(database)
                self.router.invalidate()
                log.warning("reloaded GeoIP database %s", self.source.path)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # RFC 1035 section 4.2.2 / RFC 7766 section 8: each message is preceded by
        # its length in two bytes; a connection may carry many queries in a row.
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "0.0.0.0"
        self._tcp_writers.add(writer)
        try:
            while True:
                prefix = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_SECONDS)
                (length,) = struct.unpack("!H", prefix)
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_SECONDS)
                response = self.responder.respond(data, client, tcp=True)
                if response is None:
                    break  # unreadable: a stream we cannot trust to stay in frame
                writer.write(struct.pack("!H", len(response)) + response)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._tcp_writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
