"""The node's Prometheus metrics: counters and histograms bound once, incremented on the path.

Each node process has its own registry; labelled children are resolved here at start
so the request path only calls `.inc()` / `.observe()` on ready objects.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["NodeMetrics"]


class NodeMetrics:
    """Counters of one node: requests by outcome, bytes, fills, upstream traffic."""

    def __init__(self, node: str, role: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"node": node, "role": role}
        outcomes = Counter(
            "edgeshield_requests_total",
            "Client requests by cache outcome",
            ["node", "role", "outcome"],
            registry=self.registry,
        )
        self.hits = outcomes.labels(**labels, outcome="hit")
        self.passes = outcomes.labels(**labels, outcome="pass")
        self.refused = outcomes.labels(**labels, outcome="refused")
        self.stale_if_error = outcomes.labels(**labels, outcome="stale_if_error")
        self.bytes_sent = Counter(
            "edgeshield_body_bytes_sent_total",
            "Body bytes sent to clients",
            ["node", "role"],
            registry=self.registry,
        ).labels(**labels)
        self.upstream_requests = Counter(
            "edgeshield_upstream_requests_total",
            "Requests sent to the next tier for fills",
            ["node", "role"],
            registry=self.registry,
        ).labels(**labels)
        self.upstream_errors = Counter(
            "edgeshield_upstream_errors_total",
            "Requests the next tier could not answer",
            ["node", "role"],
            registry=self.registry,
        ).labels(**labels)
        self.stored = Counter(
            "edgeshield_objects_stored_total",
            "Responses stored",
            ["node", "role"],
            registry=self.registry,
        ).labels(**labels)
        self.fill_failures = Counter(
            "edgeshield_fill_failures_total",
            "Fills that broke off and were discarded",
            ["node", "role"],
            registry=self.registry,
        ).labels(**labels)
        self.background_revalidations = Counter(
            "edgeshield_background_revalidations_total",
            "stale-while-revalidate background revalidations",
            ["node", "role"],
            registry=self.registry,
        ).labels(**labels)
        self.invalidations = Counter(
            "edgeshield_invalidations_total",
            "URIs invalidated by unsafe requests",
            ["node", "role"],
            registry=self.registry,
        ).labels(**labels)
        self.fill_seconds = Histogram(
            "edgeshield_fill_seconds",
            "Time from fill start to its end",
            ["node", "role"],
            registry=self.registry,
        ).labels(**labels)
        self.misses = outcomes.labels(**labels, outcome="miss")
        latency = Histogram(
            "edgeshield_request_seconds",
            "Time to answer a client request (to the end of the body), by outcome",
            ["node", "role", "outcome"],
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
            ),
            registry=self.registry,
        )
        self.hit_seconds = latency.labels(**labels, outcome="hit")
        self.miss_seconds = latency.labels(**labels, outcome="miss")
        self.store_bytes = Gauge(
            "edgeshield_store_bytes",
            "Bytes held by the object store",
            ["node", "role"],
            registry=self.registry,
        ).labels(**labels)

    def render(self) -> bytes:
        """The Prometheus text exposition of this node's metrics."""
        return bytes(generate_latest(self.registry))
