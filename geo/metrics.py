"""GeoDNS's Prometheus metrics: queries by type, rcode and region answered, the
answer cache, malformed queries and the health of every edge, read at scrape time.

Served on the geo HTTP listener at `/metrics`, with the node secret (as a node's
admin `/metrics` is); nothing is added to the query path but one dict increment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from geo.dns import DnsResponder
from geo.health import HealthMonitor
from runtime.auth import bearer_matches
from runtime.version import version

__all__ = ["GeoMetrics", "metrics_view"]


class GeoMetrics:
    """The collector of one geo service's numbers."""

    def __init__(self, responder: DnsResponder, health: HealthMonitor) -> None:
        self.responder = responder
        self.health = health
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]

    def collect(self) -> Iterator[Metric]:
        """The metric families, for prometheus_client's registry."""
        responder = self.responder
        answers = CounterMetricFamily(
            "edgeshield_dns_answers",
            "DNS queries answered, by query type, rcode and region of the edge answered",
            labels=["qtype", "rcode", "region"],
        )
        for (qtype, rcode, region), count in sorted(responder.answers.items()):
            answers.add_metric([qtype, rcode, region or "-"], count)
        yield answers
        for name, help_text, value in (
            ("edgeshield_dns_queries", "DNS queries received", responder.queries),
            (
                "edgeshield_dns_cache_hits",
                "Queries answered from the answer cache",
                responder.cache_hits,
            ),
            (
                "edgeshield_dns_malformed",
                "Queries that did not parse or broke a rule",
                responder.malformed,
            ),
        ):
            family = CounterMetricFamily(name, help_text)
            family.add_metric([], value)
            yield family
        healthy = GaugeMetricFamily(
            "edgeshield_dns_edge_healthy",
            "1 if the edge passed its last health check",
            labels=["edge"],
        )
        for name, state in sorted(self.health.states.items()):
            healthy.add_metric([name], 1.0 if state.healthy else 0.0)
        yield healthy
        info = GaugeMetricFamily(
            "edgeshield_build_info", "The running version", labels=["version", "role"]
        )
        info.add_metric([version(), "geo"], 1.0)
        yield info

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return bytes(generate_latest(self.registry))


def metrics_view(metrics: GeoMetrics, secret: Callable[[], str]) -> Callable[[web.Request], Any]:
    """`GET /metrics`, with the node secret; refused while the geo has no secret."""

    async def view(request: web.Request) -> web.Response:
        expected = secret()
        if not expected:
            return web.json_response(
                {"error": "set the node secret to read /metrics (see [security])"}, status=503
            )
        if not bearer_matches(request.headers.get("Authorization"), expected):
            return web.json_response(
                {"error": "the node secret is required (Authorization: Bearer ...)"}, status=401
            )
        return web.Response(body=metrics.render(), content_type="text/plain")

    return view
