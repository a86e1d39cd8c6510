"""Edge health as the geo service sees it: each edge's admin `/healthz`, polled.

An edge is in answers while its last check said 200. A 503 (not ready, for instance
while it catches up on purges it missed), any other status, a refused connection or a
timeout takes it out at once, so with the default one-second interval and a timeout
no longer than the interval, a failing edge leaves the answers within about two
seconds and comes back on its first good check. Until an edge's first check has
finished it counts as healthy: a geo service that starts before its edges must not
answer with nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from fleet.config import EdgeConfig

__all__ = ["EdgeState", "HealthMonitor", "check_timeout"]

log = logging.getLogger("edgeshield.geo.health")


def check_timeout(interval: float) -> float:
    """How long one check may take: the interval, within 0.25-1 s.

    One second is long for a loopback or in-region admin call and short enough that
    interval + timeout stays under the three seconds a failing edge may linger.
    """
    return min(1.0, max(0.25, interval))


@dataclass(frozen=True, slots=True)
class EdgeState:
    """The outcome of an edge's last check."""

    healthy: bool
    detail: str
    checked: bool = False
    checked_at: float = 0.0


class HealthMonitor:
    """Polls every edge's `/healthz` and keeps the set of healthy edge names."""

    def __init__(
        self,
        edges: Iterable[EdgeConfig],
        secret: str,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.edges = tuple(edges)
        self.secret = secret
        self.interval = interval
        self.timeout = check_timeout(interval) if timeout is None else timeout
        self.on_change = on_change
        self.states: dict[str, EdgeState] = {
            edge.name: EdgeState(True, "not checked yet") for edge in self.edges
        }
        self.healthy: frozenset[str] = frozenset(self.states)
        self.polls = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HealthMonitor:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """Poll forever, one round per interval (a slow round delays the next)."""
        while True:
            started = time.monotonic()
            await self.poll_once()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def poll_once(self) -> None:
        """Check every edge once, concurrently, and update the healthy set."""
        results = await asyncio.gather(*(self._check(edge) for edge in self.edges))
        now = time.time()
        for edge, (healthy, detail) in zip(self.edges, results, strict=True):
            previous = self.states[edge.name]
            if previous.checked and previous.healthy != healthy:
                log.warning(
                    "edge %s is %s: %s", edge.name, "healthy" if healthy else "down", detail
                )
            self.states[edge.name] = EdgeState(healthy, detail, True, now)
        self.polls += 1
        healthy_names = frozenset(n for n, s in self.states.items() if s.healthy)
        if healthy_names != self.healthy:
            self.healthy = healthy_names
            if self.on_change is not None:
                self.on_change()

    async def _check(self, edge: EdgeConfig) -> tuple[bool, str]:
        session = self._session
        if session is None:
            raise RuntimeError("HealthMonitor used outside `async with`")
        url = f"{edge.admin_url}/healthz"
        headers = {"Authorization": f"Bearer {self.secret}"}
        try:
            async with session.get(url, headers=headers) as response:
                body = await response.text(errors="replace")
                if response.status == 200:
                    return True, "ready"
                return False, f"HTTP {response.status}: {_why(body)}"
        except TimeoutError:
            return False, f"no answer within {self.timeout:g}s"
        except aiohttp.ClientError as exc:
            return False, f"unreachable: {exc.__class__.__name__}: {exc}"


def _why(body: str) -> str:
    """The reason a not-ready edge gives, from its JSON body when it has one."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:200] or "no reason given"
    if isinstance(data, dict):
        for key in ("reason", "detail", "status", "error"):
            if key in data:
                return str(data[key])[:200]
    return json.dumps(data)[:200]
