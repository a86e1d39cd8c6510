"""A node's next tier as the engine's `Upstream`: the shield ring (edges), failing
over along it, then the service's origin pool (shields, or edges with no shield
alive when `origin_fallback` allows); each worker takes its share of the origin
connection cap."""

from __future__ import annotations

from collections.abc import AsyncIterable, Coroutine

import aiohttp
from multidict import CIMultiDict

from edge.upstream import OriginPool, ShieldRing, UpstreamError, UpstreamResponse
from fleet.config import Service

#: seconds an edge waits for a shield's answer beyond the longest a shield can wait
#: for its origins: the shield's own 504 then arrives before the edge gives up
SHIELD_ANSWER_MARGIN = 1.0


def shield_read_timeout(services: tuple[Service, ...]) -> float:
    """How long an edge waits for a shield's answer head.

    Longer than a shield can take to answer for the slowest service: the wait for an
    origin connection slot, a connect to each of its origins in turn, then the
    origin's `read_timeout`. With the same timeout on both tiers, an origin slower
    than `read_timeout` made the edge give up first (its clock started earlier), mark
    a healthy shield down and send the request to the next shield, a second origin
    fetch of the same slow answer; now the shield's 504 (or its late answer) comes
    first.
    """
    return SHIELD_ANSWER_MARGIN + max(
        (
            s.origin_queue_timeout + s.connect_timeout * len(s.origins) + s.read_timeout
            for s in services
        ),
        default=30.0,
    )


class TierUpstream:
    """The next tier of a node: the shield ring (edges), then the origin pool."""

    def __init__(
        self,
        services: tuple[Service, ...],
        ring: ShieldRing | None,
        session: aiohttp.ClientSession,
        workers: int = 1,
    ) -> None:
        self.ring = ring
        self._session = session
        self._workers = workers
        # the cap on origin connections is the node's: each worker takes its share
        self.pools = {service.name: self._pool(service) for service in services}

    def _pool(self, service: Service) -> OriginPool:
        share = -(-service.max_origin_connections // self._workers)
        return OriginPool(service, self._session, max_connections=share)

    async def reconfigure(self, services: tuple[Service, ...]) -> None:
        """Take reloaded services: a changed service gets a new origin pool (requests
        on the old one finish there), a service gone loses its pool."""
        old = self.pools
        self.pools = {
            s.name: old[s.name] if s.name in old and old[s.name].service == s else self._pool(s)
            for s in services
        }
        if not (self.ring is not None and self.ring.shields):
            for name, pool in self.pools.items():
                if old.get(name) is not pool:
                    pool.start()
        for name, pool in old.items():
            if self.pools.get(name) is not pool:
                await pool.stop()

    def fetch(
        self,
        service: Service,
        key: str,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> Coroutine[object, object, UpstreamResponse]:
        """Ask the key's shield (failing over along the ring), else the origins; to
        await. With no shield, the origin pool's own coroutine: a layer that only
        passed the answer through was one more frame to resume at each fill step."""
        if self.ring is not None and self.ring.shields:
            return self._through_ring(service, key, method, target, headers, body)
        return self.pools[service.name].request(method, target, headers, body)

    async def _through_ring(
        self,
        service: Service,
        key: str,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        """The key's shield, failing over along the ring; the origins when no shield
        answers and the service falls back to them."""
        assert self.ring is not None  # `fetch` comes here only with shields
        response = await self.ring.request(key, method, target, headers, body)
        if response is not None:
            return response
        if not service.origin_fallback:
            raise UpstreamError(
                502, "no shield is reachable and origin fallback is off", unreachable=True
            )
        return await self.pools[service.name].request(method, target, headers, body)

    def failed(self, response: UpstreamResponse) -> None:
        """A peer broke off a body: a shield is probed at once (`ShieldRing.suspect`;
        origins have their own ejection on connect failures)."""
        if self.ring is not None and response.peer in self.ring.names:
            self.ring.suspect(response.peer)

    def start(self) -> None:
        """Start health checks (origins only where this node talks to them)."""
        if self.ring is not None and self.ring.shields:
            self.ring.start()
        else:
            for pool in self.pools.values():
                pool.start()

    async def stop(self) -> None:
        """Stop health checks."""
        if self.ring is not None:
            await self.ring.stop()
        for pool in self.pools.values():
            await pool.stop()
