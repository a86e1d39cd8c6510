"""A node worker's client-facing listeners: the connection limits, the front chosen
(`front = "httptools"`, our own, or aiohttp's), the TLS listener and the plain one on
sockets every worker shares, and their closing at stop."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from aiohttp import web

from edge.accesslog import AccessLog
from edge.engine import Engine
from edge.front.aiohttp_adapter import LimitedServer, traffic_handler
from edge.front.https_policy import HttpsPolicy
from edge.front.protocol import Front, FrontLimits
from edge.front.tls_listener import TlsListener, start_tls_listener
from edge.limits import ConnectionLimits
from edge.metrics import NodeMetrics
from fleet.config import FRONTS, Fleet, NodeConfig, split_host_port


class TrafficListeners:
    """The listeners one worker serves clients on, and the limits they share."""

    def __init__(
        self,
        limits: ConnectionLimits,
        tls: TlsListener | None,
        server: asyncio.Server | None,
        runner: web.BaseRunner | None,
    ) -> None:
        self.limits = limits
        #: the TLS listener, when the node has `tls_listen`
        self.tls = tls
        self._server = server
        self._runner = runner

    @classmethod
    async def start(
        cls,
        fleet: Fleet,
        node: NodeConfig,
        engine: Engine,
        metrics: NodeMetrics,
        access_log: AccessLog | None,
    ) -> TrafficListeners:
        """Open the node's listeners: TLS first, so that once the plain port answers
        (what supervisors wait for), so does TLS."""
        loop = asyncio.get_running_loop()
        front_name = front_of(node)
        limits = ConnectionLimits(
            ConnectionLimits.worker_share(node.max_connections, node.workers),
            node.head_timeout,
            metrics,
            # aiohttp's server keeps its own keep-alive timer; ours is the limits' sweep
            keepalive_timeout=node.keepalive_timeout if front_name == "httptools" else float("inf"),
        )
        limits.start()
        https = HttpsPolicy(fleet.services)
        host, port = split_host_port(node.listen)
        traffic_server: asyncio.Server | None = None
        traffic_runner: web.BaseRunner | None = None
        http1: Any
        if front_name == "httptools":
            front_limits = FrontLimits(
                max_head_size=node.max_head_size,
                max_fields=node.max_header_fields,
                body_timeout=node.body_timeout,
                send_timeout=node.send_timeout,
            )
            front = Front(engine, limits, metrics, access_log, front_limits, https=https)
            http1 = Front(engine, limits, metrics, access_log, front_limits, "https", https=https)
        else:
            http1 = server = LimitedServer(
                traffic_handler(engine, access_log, metrics, https),
                limits,
                access_log=None,
                keepalive_timeout=node.keepalive_timeout,
            )
        tls_listener = (
            await start_tls_listener(
                fleet,
                node,
                listen_socket(*split_host_port(node.tls_listen)),
                engine,
                http1,
                metrics,
                access_log,
                limits,
            )
            if node.tls_listen
            else None
        )
        if front_name == "httptools":
            traffic_server = await loop.create_server(
                front, sock=listen_socket(host, port), backlog=1024
            )
        else:
            traffic_runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=5.0)
            await traffic_runner.setup()
            site = web.SockSite(traffic_runner, listen_socket(host, port))
            await site.start()
        return cls(limits, tls_listener, traffic_server, traffic_runner)

    async def close(self) -> None:
        """Stop listening: TLS, then the plain listener, its idle connections closed
        (the limits are stopped by the caller, after the admin listener)."""
        if self.tls is not None:
            await self.tls.close()
        if self._server is not None:
            self._server.close()
            for connection in list(self.limits.connections):
                connection.close_for_idle()
        if self._runner is not None:
            await self._runner.cleanup()


def front_of(node: NodeConfig) -> str:
    """The client-facing server a node runs: its `front` key, unless the environment
    variable EDGESHIELD_FRONT names one (so a whole test suite can run on either)."""
    chosen = os.environ.get("EDGESHIELD_FRONT", node.front)
    return chosen if chosen in FRONTS else node.front


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket shared by every worker of the node (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
