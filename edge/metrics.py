"""The node's Prometheus metrics: plain numbers on the request path, exposed on scrape.

The request path only adds to a Python float (no lock, no label lookup): a node
process is single-threaded on its event loop, so prometheus_client's locked values
would cost a hit about a microsecond each for nothing. A collector turns the numbers
into Prometheus metric families when `/metrics` is scraped.

A node with several worker processes is one node to Prometheus: on a scrape, worker
0 asks every other worker for its `snapshot()` (over the relay, see edge.relay) and
renders the sum (`render(others)`). The request path pays nothing for it (no shared
memory, no file per counter as prometheus_client's multiprocess mode keeps).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from runtime.version import version

__all__ = ["Count", "Distribution", "Level", "NodeMetrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Count:
    """A monotonically increasing number (a Prometheus counter's value)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount`."""
        self.value += amount


class Level:
    """A number that goes up and down (a Prometheus gauge's value)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        """Set the value."""
        self.value = value


class Distribution:
    """Observations counted into fixed buckets (a Prometheus histogram's values)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Buckets as Prometheus wants them: cumulative, ending with +Inf."""
        running = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return buckets


#: The label of answers to a Host that no service serves.
UNKNOWN_SERVICE = "-"


class NodeMetrics:
    """Counters of one node: requests by outcome, bytes, fills, upstream traffic.

    `hosts` maps each Host the fleet serves to its service, so that answers are
    counted by service and status class with bounded labels whatever a client sends.
    """

    def __init__(self, node: str, role: str, hosts: Mapping[str, str] | None = None) -> None:
        self.node = node
        self.role = role
        self._services = dict(hosts or {})
        #: answers by (service, status class "2xx"...), the service "-" if unknown
        self.responses: dict[tuple[str, str], float] = {}
        self._answer_keys: dict[tuple[str | None, int], tuple[str, str]] = {}
        self.hits = Count()
        self.misses = Count()
        self.passes = Count()
        self.refused = Count()
        self.stale_if_error = Count()
        self.bytes_sent = Count()
        self.sendfile_answers = Count()
        self.upstream_requests = Count()
        self.upstream_errors = Count()
        self.stored = Count()
        #: hits on objects read from disk for them (not held in the memory tier)
        self.disk_hits = Count()
        #: objects committed to stable storage (a service's `durable_objects`)
        self.durable_commits = Count()
        self.fill_failures = Count()
        self.background_revalidations = Count()
        self.invalidations = Count()
        self.store_corrupt = Count()
        self.not_stored_too_large = Count()
        self.not_stored_close_delimited = Count()
        self.decode_refused = Count()
        self.store_bytes = Level()
        self.connections_open = Level()
        self.connections_refused = Count()
        self.head_timeouts = Count()
        self.stale_unreachable = Count()
        self.workers_live = Level()
        self.workers_expected = Level()
        self.worker_restarts = Count()
        self.reloads = Count()
        self.tls_unrecognized_name = Count()
        self.tls_reloads = Count()
        self.tls_reload_failures = Count()
        self.h2_goaways = Count()
        self.fill_seconds = Distribution()
        self.hit_seconds = Distribution()
        self.miss_seconds = Distribution()
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]

    def responded(self, host: str | None, status: int) -> None:
        """Count one answer by its service (from the Host field) and status class."""
        key = self._answer_keys.get((host, status))
        if key is None:
            key = self._answer_key(host, status)
        self.responses[key] = self.responses.get(key, 0.0) + 1.0

    def _answer_key(self, host: str | None, status: int) -> tuple[str, str]:
        service = self._services.get(host or "")
        if service is None and host:
            service = self._services.get(host.rpartition(":")[0].lower() or host.lower())
        key = (service or UNKNOWN_SERVICE, _STATUS_CLASSES.get(status // 100, "other"))
        if host in self._services and len(self._answer_keys) < 1024:
            # remembered for configured hosts only, so clients cannot grow it
            self._answer_keys[(host, status)] = key
        return key

    def snapshot(self) -> dict[str, Any]:
        """This process's values as plain JSON data, for worker 0 to add up."""
        values: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, Count | Level):
                values[name] = value.value
            elif isinstance(value, Distribution):
                values[name] = {"counts": list(value.counts), "total": value.total}
        values["responses"] = [[s, c, n] for (s, c), n in self.responses.items()]
        return values

    def add(self, snapshot: Mapping[str, Any]) -> None:
        """Add another process's `snapshot()` to these values (unknown names are
        ignored, so workers of a different version cannot break a scrape)."""
        for name, value in snapshot.items():
            mine = getattr(self, name, None)
            if isinstance(mine, Count | Level) and isinstance(value, int | float):
                mine.value += value
            elif isinstance(mine, Distribution) and isinstance(value, dict):
                counts = value.get("counts")
                if isinstance(counts, list) and len(counts) == len(mine.counts):
                    mine.counts = [a + int(b) for a, b in zip(mine.counts, counts, strict=True)]
                    mine.total += float(value.get("total", 0.0))
        for row in snapshot.get("responses") or ():
            if isinstance(row, list) and len(row) == 3:
                key = (str(row[0]), str(row[1]))
                self.responses[key] = self.responses.get(key, 0.0) + float(row[2])

    def summed(self, others: Iterable[Mapping[str, Any]]) -> NodeMetrics:
        """A copy of these values with the other processes' snapshots added."""
        total = NodeMetrics(self.node, self.role, self._services)
        total.add(self.snapshot())
        for snapshot in others:
            total.add(snapshot)
        return total

    @property
    def hit_ratio(self) -> float:
        """Hits over hits and misses (0 before any request)."""
        looked_up = self.hits.value + self.misses.value
        return self.hits.value / looked_up if looked_up else 0.0

    def collect(self) -> Iterator[Metric]:
        """The metric families, for prometheus_client's registry."""
        labels = ["node", "role"]
        values = [self.node, self.role]
        outcomes = CounterMetricFamily(
            "edgeshield_requests", "Client requests by cache outcome", labels=[*labels, "outcome"]
        )
        for outcome, count in (
            ("hit", self.hits),
            ("miss", self.misses),
            ("pass", self.passes),
            ("refused", self.refused),
            ("stale_if_error", self.stale_if_error),
        ):
            outcomes.add_metric([*values, outcome], count.value)
        yield outcomes
        ratio = GaugeMetricFamily(
            "edgeshield_hit_ratio", "Hits over hits and misses since start", labels=labels
        )
        ratio.add_metric(values, self.hit_ratio)
        yield ratio
        answers = CounterMetricFamily(
            "edgeshield_responses",
            "Client answers by service and status class",
            labels=[*labels, "service", "status_class"],
        )
        for (service, status_class), answered in sorted(self.responses.items()):
            answers.add_metric([*values, service, status_class], answered)
        yield answers
        for name, help_text, count in (
            ("edgeshield_body_bytes_sent", "Body bytes sent to clients", self.bytes_sent),
            (
                "edgeshield_sendfile_answers",
                "Answers whose body left its stored file by os.sendfile",
                self.sendfile_answers,
            ),
            (
                "edgeshield_upstream_requests",
                "Requests sent to the next tier for fills",
                self.upstream_requests,
            ),
            (
                "edgeshield_upstream_errors",
                "Requests the next tier could not answer",
                self.upstream_errors,
            ),
            ("edgeshield_objects_stored", "Responses stored", self.stored),
            (
                "edgeshield_disk_hits",
                "Hits on objects read from disk for them, not held in the memory tier",
                self.disk_hits,
            ),
            (
                "edgeshield_durable_commits",
                "Objects committed to stable storage (a service's durable_objects)",
                self.durable_commits,
            ),
            (
                "edgeshield_fill_failures",
                "Fills that broke off and were discarded",
                self.fill_failures,
            ),
            (
                "edgeshield_background_revalidations",
                "stale-while-revalidate background revalidations",
                self.background_revalidations,
            ),
            (
                "edgeshield_invalidations",
                "URIs invalidated by unsafe requests",
                self.invalidations,
            ),
            (
                "edgeshield_connections_refused",
                "Client connections refused (503 and closed) over the connection cap",
                self.connections_refused,
            ),
            (
                "edgeshield_head_timeouts",
                "Client connections closed because a request head took over head_timeout",
                self.head_timeouts,
            ),
            (
                "edgeshield_store_corrupt",
                "Stored bodies that failed their checksum (each object dropped)",
                self.store_corrupt,
            ),
            ("edgeshield_reloads", "Fleet file reloads applied (SIGHUP)", self.reloads),
            (
                "edgeshield_decode_refused",
                "Coded bodies not decoded past the object size limit (decompression bombs)",
                self.decode_refused,
            ),
            (
                "edgeshield_tls_unrecognized_name",
                "TLS handshakes refused with unrecognized_name (unknown or missing SNI)",
                self.tls_unrecognized_name,
            ),
            (
                "edgeshield_tls_reloads",
                "Certificate reloads that served new files",
                self.tls_reloads,
            ),
            (
                "edgeshield_tls_reload_failures",
                "Certificate reloads refused (a bad file: the old certificate kept)",
                self.tls_reload_failures,
            ),
            (
                "edgeshield_h2_goaways",
                "HTTP/2 connections sent GOAWAY for abuse (rapid resets, protocol errors)",
                self.h2_goaways,
            ),
        ):
            family = CounterMetricFamily(name, help_text, labels=labels)
            family.add_metric(values, count.value)
            yield family
        unstored = CounterMetricFamily(
            "edgeshield_bodies_not_stored",
            "Storable responses passed on unstored or aborted, by reason",
            labels=[*labels, "reason"],
        )
        for reason, count in (
            ("too_large", self.not_stored_too_large),
            ("close_delimited", self.not_stored_close_delimited),
        ):
            unstored.add_metric([*values, reason], count.value)
        yield unstored
        gauge = GaugeMetricFamily(
            "edgeshield_store_bytes", "Bytes held by the object store", labels=labels
        )
        gauge.add_metric(values, self.store_bytes.value)
        yield gauge
        connections = GaugeMetricFamily(
            "edgeshield_connections_open", "Client connections open", labels=labels
        )
        connections.add_metric(values, self.connections_open.value)
        yield connections
        yield from self._availability(labels, values)
        info = GaugeMetricFamily(
            "edgeshield_build_info", "The running version", labels=[*labels, "version"]
        )
        info.add_metric([*values, version()], 1.0)
        yield info
        fills = HistogramMetricFamily(
            "edgeshield_fill_seconds", "Time from fill start to its end", labels=labels
        )
        fills.add_metric(values, self.fill_seconds.cumulative(), self.fill_seconds.total)
        yield fills
        latency = HistogramMetricFamily(
            "edgeshield_request_seconds",
            "Time to answer a client request, by outcome",
            labels=[*labels, "outcome"],
        )
        for outcome, distribution in (("hit", self.hit_seconds), ("miss", self.miss_seconds)):
            latency.add_metric([*values, outcome], distribution.cumulative(), distribution.total)
        yield latency

    def _availability(self, labels: list[str], values: list[str]) -> Iterator[Metric]:
        """Stale answers while the next tier is unreachable, and the node's processes."""
        stale = CounterMetricFamily(
            "edgeshield_stale_when_unreachable",
            "Stale answers served because the next tier could not be reached",
            labels=labels,
        )
        stale.add_metric(values, self.stale_unreachable.value)
        yield stale
        restarts = CounterMetricFamily(
            "edgeshield_worker_restarts", "Worker processes started again", labels=labels
        )
        restarts.add_metric(values, self.worker_restarts.value)
        yield restarts
        for name, help_text, level in (
            ("edgeshield_workers_live", "Worker processes serving now", self.workers_live),
            ("edgeshield_workers_expected", "Worker processes configured", self.workers_expected),
        ):
            family = GaugeMetricFamily(name, help_text, labels=labels)
            family.add_metric(values, level.value)
            yield family

    def render(self, others: Iterable[Mapping[str, Any]] = ()) -> bytes:
        """The Prometheus text exposition of this node's metrics, summed with the
        `snapshot()`s of the node's other worker processes."""
        others = list(others)
        if not others:
            return bytes(generate_latest(self.registry))
        return bytes(generate_latest(self.summed(others).registry))


_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
