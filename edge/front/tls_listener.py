"""A node's TLS listener: certificates by SNI, then h2 or HTTP/1.1 by ALPN.

`start_tls_listener` opens `tls_listen` (SO_REUSEPORT, shared by the node's workers
like the plain listener), loads the certificates (edge/front/tls.py), reloads them when
their files change (and on SIGHUP: the node's handler calls `on_reload_signal`),
replaces the session-ticket key every `TICKET_KEY_LIFETIME`, and hands each
connection, once its handshake is done, to HTTP/2 (edge/front/h2_protocol.py) or
to the HTTP/1.1 front whose factory the node passes (`http1`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.accesslog import AccessLog
from edge.front.alpn import AlpnDispatch, ProtocolFactory
from edge.front.h2_protocol import h2_factory
from edge.front.https_policy import HttpsPolicy
from edge.front.tls import TlsCertificates
from edge.limits import ConnectionLimits
from edge.metrics import NodeMetrics
from fleet.config import Fleet, NodeConfig
from runtime.tasks import cancel_and_wait

if TYPE_CHECKING:
    from edge.engine import Engine

__all__ = ["TlsListener", "start_tls_listener"]

#: seconds a client has to finish its handshake (nginx's ssl_handshake_timeout is 60;
#: Python's default 60 too; a handshake is a few round trips)
HANDSHAKE_TIMEOUT = 10.0

#: seconds between session-ticket keys. A new listener context draws a new random key;
#: tickets made under the old one no longer resume (a full handshake instead), so a key
#: that leaks opens at most this much recorded traffic (RFC 8446 4.6.1 caps a ticket's
#: life at 7 days; nginx keeps its random key until a restart).
TICKET_KEY_LIFETIME = 12 * 3600.0


@dataclass
class TlsListener:
    """A running TLS listener and the certificates it serves.

    The listening socket is kept here; each server accepts on a duplicate of it, so a
    new server with a new listener context (a new ticket key) takes over the same
    port without a moment where nothing accepts, and connections the old one accepted
    go on."""

    server: asyncio.base_events.Server
    certificates: TlsCertificates
    factory: ProtocolFactory
    sock: socket.socket
    _rotation: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, factory: ProtocolFactory, sock: socket.socket, certificates: TlsCertificates
    ) -> TlsListener:
        """Accept TLS on `sock` with `certificates` (the listener owns the socket)."""
        server = await cls._serve(factory, sock, certificates.listener_context())
        return cls(server, certificates, factory, sock)

    @staticmethod
    async def _serve(
        factory: ProtocolFactory, sock: socket.socket, context: ssl.SSLContext
    ) -> asyncio.base_events.Server:
        return await asyncio.get_running_loop().create_server(
            factory, sock=sock.dup(), ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
        )

    async def rotate(self) -> None:
        """Take new connections with a new listener context (a new ticket key)."""
        context = self.certificates.listener_context(fresh=True)
        server = await self._serve(self.factory, self.sock, context)
        old, self.server = self.server, server
        old.close()

    async def _rotate_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.rotate()

    def start(self, ticket_key_lifetime: float = TICKET_KEY_LIFETIME) -> None:
        """Start replacing the ticket key every `ticket_key_lifetime` seconds."""
        if self._rotation is None:
            self._rotation = asyncio.get_running_loop().create_task(
                self._rotate_forever(ticket_key_lifetime)
            )

    async def close(self) -> None:
        """Stop accepting and stop watching the files (open connections are the
        HTTP fronts' to close)."""
        if self._rotation is not None:
            await cancel_and_wait(self._rotation)
        self.server.close()
        self.sock.close()
        await self.certificates.stop()


async def start_tls_listener(
    fleet: Fleet,
    node: NodeConfig,
    sock: socket.socket,
    engine: Engine,
    http1: ProtocolFactory,
    metrics: NodeMetrics,
    access_log: AccessLog | None,
    limits: ConnectionLimits | None,
) -> TlsListener:
    """Serve TLS on `sock` (the bound `tls_listen` socket)."""
    certificates = TlsCertificates.for_node(fleet, node, metrics)
    factory = AlpnDispatch.factory(
        h2_factory(engine, metrics, access_log, limits, https=HttpsPolicy(fleet.services)),
        http1,
    )
    listener = await TlsListener.open(factory, sock, certificates)
    listener.start()
    certificates.start()
    return listener
