"""A node's admin listener (worker 0 only; the node secret required on every path):
`/healthz` (ready once caught up on purges; degraded while workers are missing),
`/metrics` (every worker's values summed), the purge intake, `/v1/cache`, and the
match count a purge's status reports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from edge.cache.keys import VARIANT_SEPARATOR
from edge.cache.model import ObjectMeta
from edge.cache.purge import PurgeRecord, PurgeRules, PurgeVerdict, url_keys
from edge.metrics import NodeMetrics
from edge.purge_sync import PurgeSync
from edge.store import DiskStore, io
from edge.store.disk_index import BYTES_KEY
from edge.workers import WorkerSupervisor
from fleet.config import Fleet, NodeConfig, split_host_port
from runtime.auth import bearer_matches

#: Objects a purge's match count looks at, at most (the count is for reporting).
MATCH_SCAN_LIMIT = 20000


async def start_admin_listener(app: web.Application, node: NodeConfig) -> web.BaseRunner:
    """Serve `app` on the node's `admin_listen`; the runner to clean up at stop."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    host, port = split_host_port(node.admin_listen)
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


def admin_app(
    node: NodeConfig,
    secret: str,
    sync: PurgeSync,
    metrics: NodeMetrics,
    store: DiskStore,
    supervisor: WorkerSupervisor | None = None,
) -> web.Application:
    """The admin listener's application (routes other than `/v1/cache`)."""

    @web.middleware
    async def require_secret(
        request: web.Request, handler: Callable[[web.Request], object]
    ) -> web.StreamResponse:
        if not bearer_matches(request.headers.get("Authorization"), secret):
            return web.json_response(
                {"error": "the node secret is required (Authorization: Bearer ...)"}, status=401
            )
        result = await handler(request)  # type: ignore[misc]
        assert isinstance(result, web.StreamResponse)
        return result

    async def healthz(request: web.Request) -> web.Response:
        if not sync.ready:
            return web.json_response(
                {"node": node.name, "status": "not ready", "reason": "catching up on purges"},
                status=503,
            )
        if supervisor is not None and supervisor.live < supervisor.expected:
            # still serving (200), on fewer processes than configured until the
            # missing workers are replaced
            return web.json_response(
                {
                    "node": node.name,
                    "status": "degraded",
                    "workers": {"live": supervisor.live, "expected": supervisor.expected},
                }
            )
        return web.json_response({"node": node.name, "status": "ok"})

    async def metrics_view(request: web.Request) -> web.Response:
        # every worker adds to the index's shared byte count; read it, not this
        # process's last sight of it
        metrics.store_bytes.set(await io.run(store.index.get, BYTES_KEY, store.size_bytes))
        others = await supervisor.relay.collect_metrics() if supervisor is not None else []
        return web.Response(body=metrics.render(others), content_type="text/plain")

    app = web.Application(middlewares=[require_secret])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_routes(sync.routes())
    return app


def match_counter(fleet: Fleet, store: DiskStore) -> Callable[[PurgeRecord], Awaitable[int]]:
    """How many stored objects a purge covers (for the purge's status), read from the
    index without promoting anything into the memory tier."""

    services = {service.name: service for service in fleet.services}

    async def count(record: PurgeRecord) -> int:
        probe = PurgeRules(fleet.services)
        probe.apply_local(record, applied_at=float("inf"))
        service = services.get(record.service)
        if service is not None and not (record.prefixes or record.tags or record.all):
            # by URL: the rows of the URLs' keys and their variants, found through
            # the index's key order, so the count costs what it matches
            bases = url_keys(service, record.urls)
            keys = await store.keys_of(bases, VARIANT_SEPARATOR, MATCH_SCAN_LIMIT)
        else:
            # the first rows only, read as a page: listing every key of a store of
            # 10^6 objects for each purge took the gateway (and the GIL) from the
            # node's acknowledgements of the purges that followed
            keys, _next = await store.keys_page(0, MATCH_SCAN_LIMIT)
        matched = 0
        for _key, meta in await store.metas(keys):
            if (
                isinstance(meta, ObjectMeta)
                and probe.verdict(
                    meta.service, meta.host, meta.target, meta.surrogate_keys, meta.stored_at
                )
                is not PurgeVerdict.NONE
            ):
                matched += 1
        return matched

    return count
