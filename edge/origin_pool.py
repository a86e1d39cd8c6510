"""`OriginPool`: a service's origin servers, as the shield (and an edge with no shield
alive) reaches them.

It spreads requests over the origins (round robin or least outstanding), ejects
failing ones (passive and active health checks, a circuit per origin), retries
idempotent requests on another origin after a connect failure (with origin groups,
on the group chosen without the origins it could not reach, when none of its own
group's could be), and caps concurrent origin requests with a bounded queue (503 +
Retry-After beyond it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import AsyncIterable, Callable, Collection, Sequence
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict

from edge.cache.rules import group_origins
from edge.statelog import StateLog
from edge.upstream_session import send
from edge.upstream_wire import (
    IDEMPOTENT,
    UpstreamError,
    UpstreamResponse,
    _ConnectFailure,
    _Request,
)
from fleet.config import Service
from runtime.tasks import cancel_and_wait

__all__ = ["OriginPool"]

log = logging.getLogger("edgeshield.upstream")


@dataclass
class _OriginState:
    url: str
    healthy: bool = True
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    outstanding: int = 0
    #: ejections logged when they start, every few seconds while they go on, and end
    log: StateLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = StateLog(log, f"origin {self.url}")

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until


@dataclass
class OriginPool:
    """A service's origin servers, balanced, health-checked and protected."""

    service: Service
    session: aiohttp.ClientSession
    max_connections: int | None = None
    clock: Callable[[], float] = time.monotonic
    #: failures in a row that open an origin's circuit (Envoy's outlier default is 5)
    eject_after: int = 3
    eject_seconds: float = 5.0
    _origins: list[_OriginState] = field(default_factory=list)
    _rr: itertools.count[int] = field(default_factory=itertools.count)
    _semaphore: asyncio.Semaphore | None = None
    _queued: int = 0
    _health_task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        groups = [url for g in self.service.traffic.origin_groups for url in g.origins]
        self._origins = [
            _OriginState(url) for url in dict.fromkeys([*self.service.origins, *groups])
        ]
        limit = self.max_connections or self.service.max_origin_connections
        self._semaphore = asyncio.Semaphore(limit)

    @property
    def origins(self) -> Sequence[_OriginState]:
        """Each origin's state (for metrics and tests)."""
        return self._origins

    def _order(self, allowed: Collection[str] | None = None) -> list[_OriginState]:
        now = self.clock()
        origins = (
            self._origins if allowed is None else [o for o in self._origins if o.url in allowed]
        )
        live = [o for o in origins if o.available(now)]
        if not live:
            # All ejected: try them anyway, least recently failed first, rather than
            # refuse outright (a full outage answers the same; a recovery is seen).
            live = sorted(origins, key=lambda o: o.ejected_until)
        if self.service.load_balancing == "least_outstanding":
            return sorted(live, key=lambda o: o.outstanding)
        start = next(self._rr) % len(live)
        return live[start:] + live[:start]

    def _group_origins(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        passed: Collection[str] = (),
    ) -> Collection[str] | None:
        """The origins of the request's origin group (edge.cache.rules); None: all.
        `passed`: origins this request could not reach, counted as down."""
        if not self.service.traffic.origin_groups:
            return None
        now = self.clock()
        states = {o.url: o for o in self._origins}
        return group_origins(
            self.service.traffic,
            self.service.origins,
            method,
            target,
            headers,
            lambda url: url not in passed and states[url].available(now),
            random.random(),
        )

    def _failed(self, origin: _OriginState) -> None:
        origin.consecutive_failures += 1
        if origin.consecutive_failures >= self.eject_after:
            origin.ejected_until = self.clock() + self.eject_seconds
            origin.log.failed(f"ejected for {self.eject_seconds:.0f}s")

    def _succeeded(self, origin: _OriginState) -> None:
        origin.consecutive_failures = 0
        origin.ejected_until = 0.0
        origin.log.recovered()

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        """Send a request to one origin of the service, failing over where safe."""
        assert self._semaphore is not None
        if self._semaphore.locked():
            if self._queued >= self.service.origin_queue:
                raise UpstreamError(503, "origin connection limit reached", retry_after=1)
            self._queued += 1
            try:
                await asyncio.wait_for(
                    self._semaphore.acquire(), timeout=self.service.origin_queue_timeout
                )
            except TimeoutError:
                raise UpstreamError(
                    503, "waited too long for an origin connection", retry_after=1
                ) from None
            finally:
                self._queued -= 1
        else:
            await self._semaphore.acquire()
        released = False

        def release_slot() -> None:
            nonlocal released
            if not released:
                released = True
                assert self._semaphore is not None
                self._semaphore.release()

        request = _Request(method, target, headers, body)
        retryable = method in IDEMPOTENT and body is None
        #: origins this request could not connect to, and why the last one failed
        unreached: list[str] = []
        errors = ["no origin configured"]
        try:
            order = self._order(self._group_origins(method, target, headers))
            response = await self._attempt(order, request, retryable, unreached, errors)
            if response is None and retryable and unreached and self.service.traffic.origin_groups:
                # no origin of the group could be reached: for this request the group
                # is down, and its share goes where the health-aware choice sends it
                # once health checks or the circuit have seen it (an edge falling back
                # to origins runs no health checks of its own)
                again = self._group_origins(method, target, headers, passed=unreached)
                others = [o for o in self._order(again) if o.url not in unreached]
                response = await self._attempt(others, request, retryable, unreached, errors)
            if response is not None:
                response.on_done(release_slot)
                return response
        except BaseException:
            release_slot()
            raise
        release_slot()
        raise UpstreamError(502, "origin unreachable", detail=errors[-1], unreachable=True)

    async def _attempt(
        self,
        order: list[_OriginState],
        request: _Request,
        retryable: bool,
        unreached: list[str],
        errors: list[str],
    ) -> UpstreamResponse | None:
        """The first answer from `order`, moving on after a connect failure (or a
        502/503/504, but for the last origin) when the request may be retried; None
        when no origin answered (`unreached` and `errors` say which and why)."""
        for position, origin in enumerate(order):
            origin.outstanding += 1
            done = _once(_decrement(origin))
            try:
                response = await send(self.session, origin.url, request, origin.url, done)
            except _ConnectFailure as exc:
                self._failed(origin)
                unreached.append(origin.url)
                errors.append(str(exc))
                if not retryable:
                    return None
                continue
            except UpstreamError:
                self._failed(origin)
                raise
            if response.status >= 500 and retryable and response.status in (502, 503, 504):
                self._failed(origin)
                errors.append(f"{origin.url} answered {response.status}")
                if position < len(order) - 1:
                    response.close()
                    continue
            else:
                self._succeeded(origin)
            return response
        return None

    async def health_loop(self) -> None:
        """Active health checks: GET the service's health path on every origin."""
        path = self.service.health_check_path
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.service.health_check_interval))
        while True:
            for origin in self._origins:
                try:
                    async with self.session.get(origin.url + path, timeout=timeout) as response:
                        healthy = response.status < 500
                except (TimeoutError, aiohttp.ClientError, OSError):
                    healthy = False
                if healthy and not origin.healthy:
                    self._succeeded(origin)
                elif not healthy and origin.healthy:
                    origin.log.turned_unhealthy("failed its health check")
                origin.healthy = healthy
            await asyncio.sleep(self.service.health_check_interval)

    def start(self) -> None:
        """Start the active health checks."""
        if self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self.health_loop())

    async def stop(self) -> None:
        """Stop the health checks."""
        if self._health_task is not None:
            await cancel_and_wait(self._health_task)
            self._health_task = None


def _decrement(origin: _OriginState) -> Callable[[], None]:
    def decrement() -> None:
        origin.outstanding -= 1

    return decrement


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    called = False

    def wrapper() -> None:
        nonlocal called
        if not called:
            called = True
            fn()

    return wrapper
