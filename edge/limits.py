"""Client connection limits: a cap on open connections and a deadline for each head.

The policy (how many connections a worker may hold, when a head has taken too long)
lives in `ConnectionLimits`, which knows nothing of the HTTP server carrying the
bytes: a front calls `admit`/`closed` when a connection opens and ends, stamps a
connection's `head_since` when the first byte of a request arrives and clears it when
the head is complete, and the sweep closes what is past its deadline. The aiohttp
glue is `edge.front.aiohttp_adapter.LimitedServer`; a front of our own calls the same few methods.

Why a sweep and not a timer per request: a hit must stay cheap, so starting a head
costs one clock read and finishing it one store; a task wakes a few times per
`head_timeout` and closes the connections whose head started too long ago
(a slowloris sending a header line a second is cut after `head_timeout`, give or take
a quarter of it). Idle keep-alive connections (no request under way) are closed by
the same sweep when the front stamps `idle_since` (our own front does; aiohttp's
keeps its own keep-alive timer and leaves the stamp at NO_HEAD).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from edge.metrics import NodeMetrics
from runtime.tasks import cancel_and_wait

__all__ = ["NO_HEAD", "REFUSED_RESPONSE", "ConnectionLimits", "Tracked"]

#: What a connection over the cap gets before it is closed (RFC 9110 15.6.4: 503 with
#: Retry-After for a temporary overload).
REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 25\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"503 too many connections\n"
)

#: No head is started: `head_since` holds this while a connection is idle or busy.
NO_HEAD = 0.0


class Tracked(Protocol):
    """A client connection as the limits see it."""

    #: loop time of the first byte of the request head being read, or NO_HEAD
    head_since: float
    #: loop time since which no request has been under way, or NO_HEAD
    idle_since: float

    def close_for_head_timeout(self) -> None:
        """Close the connection at once: its head took too long."""

    def close_for_idle(self) -> None:
        """Close the connection: it stayed idle longer than the keep-alive timeout."""


class ConnectionLimits:
    """One worker's share of the node's connection cap, and the head deadline.

    `max_connections` is the worker's share already (the node's cap divided among
    its worker processes, as the origin connection cap is).
    """

    def __init__(
        self,
        max_connections: int,
        head_timeout: float,
        metrics: NodeMetrics,
        keepalive_timeout: float = float("inf"),
    ) -> None:
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.metrics = metrics
        self.connections: set[Tracked] = set()
        #: TLS connections between accept and the end of their handshake, not yet in
        #: `connections` (edge/front/tls_listener.py)
        self.handshakes = 0
        # a quarter of the limit: a head is cut between 1x and 1.25x head_timeout
        self.sweep_interval = min(1.0, max(0.05, min(head_timeout, keepalive_timeout) / 4))
        self._sweeper: asyncio.Task[None] | None = None

    @staticmethod
    def worker_share(node_max: int, workers: int) -> int:
        """The cap each of `workers` processes enforces so the node holds `node_max`."""
        return max(1, -(-node_max // workers))

    def admit(self, connection: Tracked) -> bool:
        """Count a new connection in, or say no (counted as refused) when at the cap."""
        if len(self.connections) >= self.max_connections:
            self.metrics.connections_refused.inc()
            return False
        self.connections.add(connection)
        self.metrics.connections_open.set(len(self.connections))
        return True

    def admit_handshake(self) -> bool:
        """Count a TLS connection in from its accept to the end of its handshake, or say
        no (counted as refused) when it would take the worker past its cap: a client
        that never finishes a handshake holds a socket as one that is served does."""
        if len(self.connections) + self.handshakes >= self.max_connections:
            self.metrics.connections_refused.inc()
            return False
        self.handshakes += 1
        return True

    def handshake_ended(self) -> None:
        """A handshake admitted by `admit_handshake` has ended (its connection, if it
        succeeded, is counted by the protocol that took it)."""
        self.handshakes -= 1

    def closed(self, connection: Tracked) -> None:
        """A connection admitted earlier has ended."""
        self.connections.discard(connection)
        self.metrics.connections_open.set(len(self.connections))

    def expired(self, now: float) -> list[Tracked]:
        """Connections whose head started more than `head_timeout` before `now`."""
        oldest = now - self.head_timeout
        return [c for c in self.connections if c.head_since != NO_HEAD and c.head_since < oldest]

    def idle(self, now: float) -> list[Tracked]:
        """Connections idle for more than `keepalive_timeout` before `now`."""
        oldest = now - self.keepalive_timeout
        return [c for c in self.connections if c.idle_since != NO_HEAD and c.idle_since < oldest]

    def sweep(self, now: float) -> int:
        """Close the connections past their head deadline or idle too long; how many
        were closed."""
        expired = self.expired(now)
        for connection in expired:
            self.metrics.head_timeouts.inc()
            self.closed(connection)
            connection.close_for_head_timeout()
        idle = self.idle(now) if self.keepalive_timeout != float("inf") else []
        for connection in idle:
            self.closed(connection)
            connection.close_for_idle()
        return len(expired) + len(idle)

    def start(self) -> None:
        """Start the sweep on the running loop."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop the sweep."""
        if self._sweeper is not None:
            await cancel_and_wait(self._sweeper)
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.sweep(loop.time())
