"""What the purge API sees of its fleet, for the status page and `/status.json`.

The purge API knows every node (it pushes purges to their admin listeners with the
node secret), so it is where the fleet's status is gathered: every `POLL_INTERVAL`
seconds it reads each node's `/healthz` and `/metrics`, and GeoDNS's `/metrics`, and
keeps a few minutes of samples, from which come hit ratios, bytes served and DNS
answers per region over the last `WINDOW` seconds. Purge propagation comes from the
log and the fan-out as they are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fleet.config import Fleet, NodeConfig, ShieldConfig
from purge_api.fanout import FanOut
from purge_api.logs import PurgeLogStore
from runtime.errors import describe_client_error
from runtime.tasks import cancel_and_wait

__all__ = ["FleetWatch", "Sample"]

log = logging.getLogger("edgeshield.purge_api.watch")

#: Seconds between two reads of every node.
POLL_INTERVAL = 2.0
#: The span (seconds) over which ratios and rates are shown.
WINDOW = 300.0
#: Purges shown with their propagation.
RECENT_PURGES = 10


@dataclass(frozen=True)
class Sample:
    """A node's counters at one moment."""

    at: float
    hits: float
    misses: float
    bytes_sent: float


@dataclass
class NodeView:
    """What the last reads said of one node."""

    config: NodeConfig
    health: str = "unknown"
    detail: str = ""
    version: str = ""
    workers: str = ""
    checked_at: float = 0.0
    samples: deque[Sample] = field(default_factory=deque)


@dataclass
class GeoView:
    """What the last reads said of GeoDNS."""

    health: str = "unknown"
    detail: str = ""
    #: (time, {region: answers so far}) samples
    samples: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)
    edges_healthy: dict[str, bool] = field(default_factory=dict)


class FleetWatch:
    """Polls the fleet's nodes and GeoDNS, and says what it saw (`snapshot`)."""

    def __init__(
        self,
        fleet: Fleet,
        secret: str,
        purge_log: PurgeLogStore,
        fanout: FanOut,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.log = purge_log
        self.fanout = fanout
        self.clock = clock
        self._headers = {"Authorization": f"Bearer {secret}"}
        self.nodes = {node.name: NodeView(node) for node in fleet.nodes}
        self.geo = GeoView() if fleet.geo is not None else None
        self._task: asyncio.Task[None] | None = None
        self._polled = asyncio.Event()

    async def start(self) -> None:
        """Start polling in the background."""
        self._task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _poll_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(total=POLL_INTERVAL, sock_connect=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                polls = [self._poll_node(session, view) for view in self.nodes.values()]
                if self.geo is not None:
                    polls.append(self._poll_geo(session, self.geo))
                await asyncio.gather(*polls)
                self._polled.set()
                await asyncio.sleep(POLL_INTERVAL)

    async def _poll_node(self, session: aiohttp.ClientSession, view: NodeView) -> None:
        base = view.config.admin_url
        now = self.clock()
        try:
            async with session.get(base + "/healthz", headers=self._headers) as response:
                health = await response.json(content_type=None)
            async with session.get(base + "/metrics", headers=self._headers) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            view.health, view.detail = "down", describe_client_error(exc, base)
            return
        view.checked_at = now
        view.health = str(health.get("status", "unknown")) if isinstance(health, dict) else "?"
        workers = health.get("workers") if isinstance(health, dict) else None
        view.workers = f"{workers['live']}/{workers['expected']}" if workers else ""
        view.detail = str(health.get("reason", "")) if isinstance(health, dict) else ""
        values = _read_metrics(text)
        view.version = values.version
        view.samples.append(Sample(now, values.hits, values.misses, values.bytes_sent))
        _trim(view.samples, now)

    async def _poll_geo(self, session: aiohttp.ClientSession, view: GeoView) -> None:
        assert self.fleet.geo is not None
        url = f"http://{self.fleet.geo.http_listen}/metrics"
        now = self.clock()
        try:
            async with session.get(url, headers=self._headers) as response:
                text = await response.text()
                if response.status != 200:
                    view.health, view.detail = "down", f"/metrics answered {response.status}"
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            view.health, view.detail = "down", describe_client_error(exc, url)
            return
        view.health, view.detail = "ok", ""
        regions: dict[str, float] = {}
        view.edges_healthy = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "edgeshield_dns_answers_total":
                    region = sample.labels.get("region", "-")
                    regions[region] = regions.get(region, 0.0) + sample.value
                elif sample.name == "edgeshield_dns_edge_healthy":
                    view.edges_healthy[sample.labels.get("edge", "?")] = sample.value == 1.0
        view.samples.append((now, regions))
        while view.samples and view.samples[0][0] < now - WINDOW:
            view.samples.popleft()

    async def wait_polled(self) -> None:
        """Wait for the first round of reads (a page asked before it shows them)."""
        await self._polled.wait()

    # -- what the page shows ----------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """Everything the status page shows, as JSON-ready data."""
        now = self.clock()
        return {
            "generated_at": now,
            "window_seconds": WINDOW,
            "nodes": [self._node(view, now) for view in self.nodes.values()],
            "purges": await self._purges(),
            "geo": self._geo(now),
        }

    def _node(self, view: NodeView, now: float) -> dict[str, Any]:
        link = self.fanout.links.get(view.config.name)
        hits = misses = sent = 0.0
        span = 0.0
        if view.samples:
            first, last = view.samples[0], view.samples[-1]
            if len(view.samples) == 1:
                hits, misses, sent = last.hits, last.misses, last.bytes_sent
            else:
                hits, misses = last.hits - first.hits, last.misses - first.misses
                sent, span = last.bytes_sent - first.bytes_sent, last.at - first.at
        looked_up = hits + misses
        return {
            "name": view.config.name,
            "role": "shield" if isinstance(view.config, ShieldConfig) else "edge",
            "region": view.config.region,
            "health": view.health,
            "detail": view.detail,
            "version": view.version,
            "workers": view.workers,
            "hit_ratio": round(hits / looked_up, 4) if looked_up else None,
            "requests": hits + misses,
            "bytes_served": sent,
            "over_seconds": round(span, 1),
            "checked_ago": round(now - view.checked_at, 1) if view.checked_at else None,
            "purge_acked_seq": link.acked_seq if link else None,
            "purge_lag": self.fanout.head - link.acked_seq if link else None,
        }

    async def _purges(self) -> list[dict[str, Any]]:
        head = self.fanout.head
        recent = await self.log.since(max(0, head - RECENT_PURGES), RECENT_PURGES, head)
        shown = []
        for purge in reversed(recent):
            acks = await self.log.acks(purge.seq)
            nodes: dict[str, float | None] = {}
            for node in self.fleet.nodes:
                ack = acks.get(node.name)
                nodes[node.name] = (
                    None
                    if ack is None
                    else round(max(0.0, ack.acked_at - purge.accepted_at) * 1000, 1)
                )
            times = [ms for ms in nodes.values() if ms is not None]
            complete = len(times) == len(nodes)
            request = purge.request
            what = [
                f"{len(items)} {name}"
                for name, items in (
                    ("url(s)", request.urls),
                    ("prefix(es)", request.prefixes),
                    ("tag(s)", request.tags),
                )
                if items
            ]
            shown.append(
                {
                    "id": purge.id,
                    "seq": purge.seq,
                    "service": purge.service,
                    "what": "everything" if request.all else ", ".join(what),
                    "soft": request.soft,
                    "accepted_at": purge.accepted_at,
                    "complete": complete,
                    "propagation_ms": max(times) if complete and times else None,
                    "nodes": nodes,
                }
            )
        return shown

    def _geo(self, now: float) -> dict[str, Any] | None:
        if self.geo is None:
            return None
        answers: dict[str, float] = {}
        span = 0.0
        if self.geo.samples:
            first_at, first = self.geo.samples[0]
            last_at, last = self.geo.samples[-1]
            span = last_at - first_at
            for region, count in last.items():
                answers[region] = count - (first.get(region, 0.0) if span else 0.0)
        return {
            "health": self.geo.health,
            "detail": self.geo.detail,
            "answers_by_region": dict(sorted(answers.items())),
            "over_seconds": round(span, 1),
            "edges_healthy": self.geo.edges_healthy,
        }


@dataclass
class _NodeNumbers:
    hits: float = 0.0
    misses: float = 0.0
    bytes_sent: float = 0.0
    version: str = ""


def _read_metrics(text: str) -> _NodeNumbers:
    """The few numbers the page shows, out of a node's /metrics."""
    numbers = _NodeNumbers()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edgeshield_requests_total":
                outcome = sample.labels.get("outcome")
                if outcome == "hit":
                    numbers.hits += sample.value
                elif outcome == "miss":
                    numbers.misses += sample.value
            elif sample.name == "edgeshield_body_bytes_sent_total":
                numbers.bytes_sent += sample.value
            elif sample.name == "edgeshield_build_info":
                numbers.version = sample.labels.get("version", "")
    return numbers


def _trim(samples: deque[Sample], now: float) -> None:
    while samples and samples[0].at < now - WINDOW:
        samples.popleft()
