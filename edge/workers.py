"""Purge rules shared by the worker processes of one node.

A node runs one process per core on a shared port (SO_REUSEPORT). Only worker 0 has
the admin listener and the purge sync, so every rule it applies is relayed to the
other workers over a socketpair made before the fork, and worker 0 waits for each
worker's acknowledgement before going on: when the node acknowledges a purge to the
API, every process of the node has applied it. A worker opens its traffic listener
only after worker 0 says it has caught up ("ready"), so no worker serves an object a
missed purge covers.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Sequence

from edge.cache.purge import PurgeRecord, PurgeRules
from fleet.config import Service

#: How long worker 0 waits for a worker to acknowledge a relayed rule.
RELAY_TIMEOUT = 5.0


class RelayingRules(PurgeRules):
    """Worker 0's rules: every change is applied here and in every other worker."""

    def __init__(self, services: Sequence[Service], peers: Sequence[socket.socket]) -> None:
        super().__init__(services)
        self._peers = list(peers)
        for peer in self._peers:
            peer.setblocking(True)
            peer.settimeout(RELAY_TIMEOUT)

    def apply(self, record: PurgeRecord, applied_at: float) -> None:
        """Apply a purge here and in every worker, in sequence order."""
        super().apply(record, applied_at)
        self._relay({"op": "apply", "record": record.to_json(), "at": applied_at})

    def apply_local(self, record: PurgeRecord, applied_at: float) -> None:
        """Apply a rule outside the log here and in every worker."""
        super().apply_local(record, applied_at)
        self._relay({"op": "local", "record": record.to_json(), "at": applied_at})

    def expire(self, now: float, max_lifetime: float) -> int:
        """Drop old rules here and in every worker."""
        dropped = super().expire(now, max_lifetime)
        self._relay({"op": "expire", "now": now, "max": max_lifetime})
        return dropped

    def announce_ready(self) -> None:
        """Tell the workers the node has caught up and they may serve."""
        self._relay({"op": "ready"})

    def _relay(self, message: dict[str, object]) -> None:
        # Blocking on purpose: a purge is not acknowledged before every worker has it,
        # and purges are rare next to requests.
        line = (json.dumps(message) + "\n").encode()
        for peer in self._peers:
            peer.sendall(line)
        for peer in self._peers:
            if peer.recv(1) != b"k":
                raise ConnectionError("a worker did not acknowledge a purge rule")


async def follow_relayed_rules(
    sock: socket.socket, rules: PurgeRules, ready: asyncio.Event
) -> None:
    """Another worker's side: apply what worker 0 relays, acknowledging each line."""
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    while True:
        line = await reader.readline()
        if not line:
            return
        message = json.loads(line)
        op = message["op"]
        if op == "apply":
            rules.apply(PurgeRecord.from_json(message["record"]), float(message["at"]))
        elif op == "local":
            rules.apply_local(PurgeRecord.from_json(message["record"]), float(message["at"]))
        elif op == "expire":
            rules.expire(float(message["now"]), float(message["max"]))
        elif op == "ready":
            ready.set()
        writer.write(b"k")
        await writer.drain()
