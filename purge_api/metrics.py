"""The purge API's Prometheus metrics: purges by state, fan-out lag and acks per
node, push failures and the log's size, computed from the log and the fan-out when
`/metrics` is scraped (node secret required, as on a node's admin listener)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from purge_api.fanout import FanOut
from purge_api.logs import PurgeLogStore, SqliteLog
from runtime.version import version

__all__ = ["render_purge_metrics"]


class _Families:
    """A collector of families computed beforehand (the log is read off the loop)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        """The families, for prometheus_client's registry."""
        yield from self.families


async def render_purge_metrics(purge_log: PurgeLogStore, fanout: FanOut, now: float) -> bytes:
    """The Prometheus text exposition of the purge API's state at `now`."""
    head = fanout.head
    links = list(fanout.links.values())
    complete_up_to = min((link.acked_seq for link in links), default=head)
    families: list[Metric] = []
    accepted = CounterMetricFamily("edgeshield_purges_accepted", "Purges logged (the log's head)")
    accepted.add_metric([], head)
    families.append(accepted)
    state = GaugeMetricFamily("edgeshield_purges", "Purges in the log by state", labels=["state"])
    state.add_metric(["complete"], complete_up_to)
    state.add_metric(["pending"], head - complete_up_to)
    families.append(state)
    acked = CounterMetricFamily(
        "edgeshield_purge_acks",
        "Purges each node acknowledged (in order: its acknowledged sequence number)",
        labels=["node"],
    )
    lag = GaugeMetricFamily(
        "edgeshield_purge_lag", "Purges logged and not yet acknowledged, by node", labels=["node"]
    )
    lag_seconds = GaugeMetricFamily(
        "edgeshield_purge_lag_seconds",
        "Age of the oldest purge a node has not acknowledged (0 when caught up)",
        labels=["node"],
    )
    failures = GaugeMetricFamily(
        "edgeshield_purge_push_failures",
        "Pushes to the node that failed in a row (0: the node is live)",
        labels=["node"],
    )
    oldest: dict[int, float] = {}
    for link in links:
        acked.add_metric([link.name], link.acked_seq)
        lag.add_metric([link.name], head - link.acked_seq)
        failures.add_metric([link.name], link.failures)
        seconds = 0.0
        if link.acked_seq < head:
            if link.acked_seq not in oldest:
                first = await purge_log.since(link.acked_seq, 1, head)
                oldest[link.acked_seq] = first[0].accepted_at if first else now
            seconds = max(0.0, now - oldest[link.acked_seq])
        lag_seconds.add_metric([link.name], seconds)
    families += [acked, lag, lag_seconds, failures]
    if isinstance(purge_log, SqliteLog):
        # a JetStream log's size is the stream's, reported by the NATS servers
        size = GaugeMetricFamily("edgeshield_purge_log_bytes", "Size of the purge log's files")
        size.add_metric([], await asyncio.to_thread(_log_bytes, str(purge_log.path)))
        families.append(size)
    info = GaugeMetricFamily(
        "edgeshield_build_info", "The running version", labels=["version", "role"]
    )
    info.add_metric([version(), "purge_api"], 1.0)
    families.append(info)
    registry = CollectorRegistry()
    registry.register(_Families(families))  # type: ignore[arg-type]
    return bytes(generate_latest(registry))


def _log_bytes(path: str) -> float:
    """The SQLite file and its write-ahead log, together."""
    total = 0
    for name in (path, path + "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(name)
    return float(total)
