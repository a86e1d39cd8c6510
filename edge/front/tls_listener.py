"""A node's TLS listener: certificates by SNI, then h2 or HTTP/1.1 by ALPN.

`start_tls_listener` opens `tls_listen` (SO_REUSEPORT, shared by the node's workers
like the plain listener), loads the certificates (edge/front/tls.py), reloads them on
SIGHUP and when their files change, and hands each connection, once its handshake is
done, to HTTP/2 (edge/front/h2_protocol.py) or to the HTTP/1.1 front whose factory
the node passes (`http1`).
"""

from __future__ import annotations

import asyncio
import signal
import socket
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

if TYPE_CHECKING:
    from edge.engine import Engine

__all__ = ["TlsListener", "start_tls_listener"]

#: seconds a client has to finish its handshake (nginx's ssl_handshake_timeout is 60;
#: Python's default 60 too; a handshake is a few round trips)
HANDSHAKE_TIMEOUT = 10.0


@dataclass
class TlsListener:
    """A running TLS listener and the certificates it serves."""

    server: asyncio.base_events.Server
    certificates: TlsCertificates

    async def close(self) -> None:
        """Stop accepting and stop watching the files (open connections are the
        HTTP fronts' to close)."""
        loop = asyncio.get_running_loop()
        loop.remove_signal_handler(signal.SIGHUP)
        self.server.close()
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
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        AlpnDispatch.factory(
            h2_factory(engine, metrics, access_log, limits, https=HttpsPolicy(fleet.services)),
            http1,
        ),
        sock=sock,
        ssl=certificates.listener_context(),
        ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
    )
    certificates.start()
    loop.add_signal_handler(signal.SIGHUP, certificates.on_reload_signal())
    return TlsListener(server, certificates)
