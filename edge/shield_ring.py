"""`ShieldRing`: the shield tier as an edge sees it.

It picks the shield for a cache key by rendezvous hashing (highest random weight), so
every edge asks the same shield for the same key and removing one of N shields moves
only that shield's 1/N of the keys. A shield that refuses connections or times out is
marked down (passive) and probed on its admin `/healthz` (active). A body cut short is
not held against a shield by itself: the cut may be its origin's (a shield can only
pass a broken body on as a cut), so it asks for a probe of that shield at once
(`suspect`), and only a failed probe or a refused connection marks it down.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict

from edge.forwarding import NODE_TOKEN_HEADER, node_token
from edge.statelog import StateLog
from edge.upstream_session import send
from edge.upstream_wire import (
    GENERATED_ERROR_HEADER,
    IDEMPOTENT,
    UpstreamError,
    UpstreamResponse,
    _ConnectFailure,
    _Request,
)
from fleet.config import ShieldConfig
from runtime.tasks import cancel_and_wait

__all__ = ["ShieldRing", "rendezvous_order"]

log = logging.getLogger("edgeshield.upstream")


def rendezvous_order(key: str, names: Sequence[str]) -> list[str]:
    """The names ordered by rendezvous (highest random weight) hashing for `key`."""
    return sorted(
        names,
        key=lambda name: hashlib.blake2b(f"{name}\x00{key}".encode(), digest_size=8).digest(),
        reverse=True,
    )


@dataclass
class _ShieldState:
    config: ShieldConfig
    down_until: float = 0.0
    healthy: bool = True
    log: StateLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = StateLog(log, f"shield {self.config.name}")


@dataclass
class ShieldRing:
    """The shield tier as an edge sees it: one shield per key, failover to the next."""

    shields: Sequence[ShieldConfig]
    session: aiohttp.ClientSession
    node_secret: str
    clock: Callable[[], float] = time.monotonic
    #: how long a passively failed shield is skipped before it is tried again
    down_seconds: float = 3.0
    probe_interval: float = 1.0
    #: reach shields on their TLS listeners (`[security] node_ca` is set)
    tls: bool = False
    _states: dict[str, _ShieldState] = field(default_factory=dict)
    _names: list[str] = field(default_factory=list)
    _probe_task: asyncio.Task[None] | None = None
    _suspect_probes: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _token: str = ""

    def __post_init__(self) -> None:
        self._token = node_token(self.node_secret)
        self._states = {s.name: _ShieldState(s) for s in self.shields}
        self._names = [s.name for s in self.shields]

    @property
    def names(self) -> list[str]:
        """The shields' names."""
        return self._names

    def order(self, key: str) -> list[ShieldConfig]:
        """Live shields for `key`, preferred first; dead ones are skipped."""
        now = self.clock()
        ordered = [self._states[name] for name in rendezvous_order(key, self._names)]
        return [s.config for s in ordered if s.healthy and now >= s.down_until]

    def mark_down(self, name: str) -> None:
        """Passive health: this shield failed a request."""
        state = self._states[name]
        state.down_until = self.clock() + self.down_seconds
        state.log.failed(f"marked down for {self.down_seconds:.0f}s")

    async def request(
        self,
        key: str,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse | None:
        """Ask the key's shield, failing over; None when no shield could answer.

        The request carries the node token (NODE_TOKEN_HEADER), by which the shield
        knows the forwarding fields are ours; it goes to shields only, never to origins.
        """
        if self._token:
            headers = headers.copy()
            headers[NODE_TOKEN_HEADER] = self._token
        request = _Request(method, target, headers, body)
        retryable = method in IDEMPOTENT and body is None
        for shield in self.order(key):
            try:
                url = shield.tls_url if self.tls else shield.url
                response = await send(self.session, url, request, shield.name, lambda: None)
            except _ConnectFailure:
                self.mark_down(shield.name)
                if not retryable:
                    raise UpstreamError(
                        502,
                        "shield unreachable",
                        detail=f"shield {shield.name}",
                        unreachable=True,
                    ) from None
                continue
            except UpstreamError:
                self.mark_down(shield.name)
                if not retryable:
                    raise
                continue
            if response.status >= 500 and response.headers.get(GENERATED_ERROR_HEADER) == "node":
                # the shield itself failed (not an origin error it relays): try the next
                self.mark_down(shield.name)
                if retryable:
                    response.close()
                    continue
            else:
                self._states[shield.name].log.recovered()
            return response
        return None

    def suspect(self, name: str) -> None:
        """A body from this shield broke off: probe it now rather than at the next
        round (one probe at a time per shield).

        The cut alone does not mark the shield down: a shield passes its origin's
        broken body on as a cut, so an origin that cuts its answers (a hostile or a
        broken one, of any service) would otherwise make every edge skip healthy
        shields, every other service's keys included. A shield that died is found by
        this probe, and by the refused connection of the fill's retry.
        """
        if name not in self._states or name in self._suspect_probes:
            return
        task = asyncio.get_running_loop().create_task(self._probe(self._states[name]))
        self._suspect_probes[name] = task
        task.add_done_callback(lambda _: self._suspect_probes.pop(name, None))

    async def _probe(self, state: _ShieldState) -> None:
        """Ask one shield's admin /healthz and record the answer."""
        timeout = aiohttp.ClientTimeout(total=max(0.5, self.probe_interval))
        headers = {"Authorization": f"Bearer {self.node_secret}"}
        try:
            async with self.session.get(
                state.config.admin_url + "/healthz", headers=headers, timeout=timeout
            ) as response:
                healthy = response.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            healthy = False
        if healthy and not state.healthy:
            state.log.recovered()
            state.down_until = 0.0
        elif not healthy and state.healthy:
            state.log.turned_unhealthy("failed its health check")
        state.healthy = healthy

    async def probe_loop(self) -> None:
        """Active health: poll each shield's admin /healthz."""
        while True:
            for state in self._states.values():
                await self._probe(state)
            await asyncio.sleep(self.probe_interval)

    def start(self) -> None:
        """Start the active probes."""
        if self._probe_task is None and self.shields:
            self._probe_task = asyncio.get_running_loop().create_task(self.probe_loop())

    async def stop(self) -> None:
        """Stop the probes."""
        if self._probe_task is not None:
            await cancel_and_wait(self._probe_task)
            self._probe_task = None
        for task in list(self._suspect_probes.values()):
            await cancel_and_wait(task)
