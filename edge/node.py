"""A caching node's process: store, engine, purge sync, traffic and admin listeners.

Edge and shield both run `run_node`; they pass different `EngineOptions` and a
different upstream. The traffic listener serves only the fleet's hosts; the admin
listener (apart, node secret required) has `/healthz`, `/metrics` and the purge intake.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from edge.accesslog import AccessLog
from edge.cache.model import ObjectMeta
from edge.cache.purge import MAX_RULE_AGE, PurgeRecord, PurgeRules, PurgeVerdict
from edge.engine import Engine, EngineOptions
from edge.forwarding import node_token
from edge.front.aiohttp_adapter import LimitedServer, traffic_handler
from edge.front.https_policy import HttpsPolicy
from edge.front.protocol import Front, FrontLimits
from edge.front.tls_listener import start_tls_listener
from edge.inspection import cache_view
from edge.limits import ConnectionLimits
from edge.metrics import NodeMetrics
from edge.purge_sync import PurgeSync
from edge.reclaim import reclaim_purged_forever
from edge.reload import on_hangup
from edge.scrub import scrub_forever
from edge.store import DiskStore, io
from edge.store.disk_index import BYTES_KEY
from edge.upstream import (
    OriginPool,
    ShieldRing,
    UpstreamError,
    UpstreamResponse,
    make_session,
)
from edge.upstream_tls import use_tls_upstreams
from edge.workers import RelayFollower, WorkerRelay, WorkerSupervisor, worker_argv
from fleet.config import (
    FRONTS,
    Fleet,
    NodeConfig,
    Service,
    load_fleet,
    node_secret,
    split_host_port,
)
from runtime.auth import bearer_matches
from runtime.errors import install_repeat_filter

log = logging.getLogger("edgeshield.node")

#: Objects a purge's match count looks at, at most (the count is for reporting).
MATCH_SCAN_LIMIT = 20000


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

    async def fetch(
        self,
        service: Service,
        key: str,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        """Ask the key's shield (failing over along the ring), else the origins."""
        if self.ring is not None and self.ring.shields:
            response = await self.ring.request(key, method, target, headers, body)
            if response is not None:
                return response
            if not service.origin_fallback:
                raise UpstreamError(
                    502, "no shield is reachable and origin fallback is off", unreachable=True
                )
        return await self.pools[service.name].request(method, target, headers, body)

    def failed(self, response: UpstreamResponse) -> None:
        """A peer broke off a body: a shield is skipped for a while (origins have their
        own ejection on connect failures)."""
        if self.ring is not None and response.peer in self.ring.names:
            self.ring.mark_down(response.peer)

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


@dataclass(frozen=True)
class NodeRole:
    """What makes a node an edge or a shield."""

    role: str  # "edge" | "shield"
    uses_shields: bool
    compress: bool
    downstream_is_cdn: bool


EDGE = NodeRole("edge", uses_shields=True, compress=True, downstream_is_cdn=False)
SHIELD = NodeRole("shield", uses_shields=False, compress=False, downstream_is_cdn=True)


def run_node(fleet: Fleet, node: NodeConfig, role: NodeRole) -> int:
    """Run a caching node until SIGTERM/SIGINT; returns the exit status.

    With `workers > 1` this process is worker 0: it starts the other workers and
    replaces any that exits (see edge.workers).
    """
    _setup_process(node)
    if not node_secret(fleet):
        print(
            f"edgeshield {role.role} {node.name}: set the node secret in "
            f"${fleet.security.node_secret_env}",
            file=sys.stderr,
        )
        return 2
    asyncio.run(_serve(fleet, node, role, worker=0, admin=True))
    return 0


def run_worker(
    source: str, node_name: str, role_name: str, worker: int, relay: socket.socket
) -> int:
    """Run worker `worker` of a node, started by its worker 0 (see edge.workers)."""
    fleet = load_fleet(source)
    node: NodeConfig = fleet.edge(node_name) if role_name == "edge" else fleet.shield(node_name)
    _setup_process(node)
    role = EDGE if role_name == "edge" else SHIELD
    asyncio.run(_serve(fleet, node, role, worker=worker, admin=False, relay=relay))
    return 0


def _setup_process(node: NodeConfig) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"{node.name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_repeat_filter()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass


async def _serve(
    fleet: Fleet,
    node: NodeConfig,
    role: NodeRole,
    *,
    worker: int,
    admin: bool,
    relay: socket.socket | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loaded: list[Any] = [fleet, node]  # [fleet, node] as last (re)loaded

    secret = node_secret(fleet)
    state_dir = os.path.join(node.cache_dir, "purge-state")
    store = await DiskStore.open(
        os.path.join(node.cache_dir, "objects"), node.cache_size, memory_bytes=node.memory_size
    )
    metrics = NodeMetrics(
        node.name, role.role, {host: s.name for s in fleet.services for host in s.hosts}
    )
    supervisor: WorkerSupervisor | None = None
    rules = PurgeRules(fleet.services)
    if admin and node.workers > 1:
        # the relay observes the rules: every change reaches every worker process
        supervisor = WorkerSupervisor(
            node.workers,
            WorkerRelay(rules, on_lost=lambda n: _lost(supervisor, n)),
            lambda n, fd: worker_argv(fleet.source, node.name, role.role, n, fd),
            on_change=lambda: _count_workers(supervisor, metrics),
        )
        _count_workers(supervisor, metrics)
    session = make_session(
        connect_timeout=min((s.connect_timeout for s in fleet.services), default=2.0),
        read_timeout=max((s.read_timeout for s in fleet.services), default=30.0),
    )
    ring = (
        ShieldRing(fleet.shields, session, secret) if role.uses_shields and fleet.shields else None
    )
    upstream = TierUpstream(fleet.services, ring, session, node.workers)
    tls_sessions = use_tls_upstreams(
        fleet,
        ring,
        upstream.pools,
        lambda tls: make_session(
            session.timeout.sock_connect or 2.0, session.timeout.sock_read or 30.0, tls
        ),
    )
    access_log = (
        AccessLog(sys.stdout, node.name)
        if os.environ.get("EDGESHIELD_ACCESS_LOG", "1") != "0"
        else None
    )
    engine = Engine(
        fleet.services,
        EngineOptions(
            node_name=node.name,
            compress=role.compress,
            downstream_is_cdn=role.downstream_is_cdn,
            mark_stale=role.downstream_is_cdn,
            trusted_proxies=tuple(
                ipaddress.ip_network(net, strict=False) for net in fleet.security.trusted_proxies
            ),
            node_token=node_token(secret),
            heuristic_with_credentials=fleet.security.heuristic_freshness_with_credentials,
        ),
        store,
        upstream,
        rules,
        metrics,
    )
    sync = PurgeSync(
        fleet,
        node.name,
        rules,
        state_dir,
        count_matches=match_counter(fleet, store),
        max_rule_age=MAX_RULE_AGE,
    )

    runners: list[web.BaseRunner] = []
    if admin:
        admin_app = _admin_app(node, secret, sync, metrics, store, supervisor)
        admin_app.router.add_get("/v1/cache", cache_view(lambda: loaded[0].services, store, rules))
        admin_runner = web.AppRunner(
            admin_app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await admin_runner.setup()
        host, port = split_host_port(node.admin_listen)
        await web.TCPSite(admin_runner, host, port, reuse_address=True).start()
        runners.append(admin_runner)
    follower: asyncio.Task[None] | None = None
    if relay is not None:
        # a worker without the admin listener: rules come from worker 0, which says
        # when the node has caught up on missed purges
        ready = asyncio.Event()
        follower = loop.create_task(RelayFollower(rules, metrics.snapshot).run(relay, ready))
        await ready.wait()
    else:
        # catch up on missed purges before serving anything they might cover
        await sync.start()
        if supervisor is not None:
            supervisor.start()
    upstream.start()
    if access_log:
        access_log.start()
    reclaimer = loop.create_task(reclaim_purged_forever(store, rules)) if admin else None
    scrubber = loop.create_task(scrub_forever(store, node.scrub_rate)) if admin else None

    front_name = front_of(node)
    limits = ConnectionLimits(
        ConnectionLimits.worker_share(node.max_connections, node.workers),
        node.head_timeout,
        metrics,
        # aiohttp's server keeps its own keep-alive timer; ours is the limits' sweep
        keepalive_timeout=node.keepalive_timeout if front_name == "httptools" else float("inf"),
    )
    limits.start()
    https = HttpsPolicy(fleet.services)
    host, port = split_host_port(node.listen)
    traffic_server: asyncio.Server | None = None
    http1: Any
    if front_name == "httptools":
        front_limits = FrontLimits(
            max_head_size=node.max_head_size,
            max_fields=node.max_header_fields,
            body_timeout=node.body_timeout,
            send_timeout=node.send_timeout,
        )
        front = Front(engine, limits, metrics, access_log, front_limits, https=https)
        http1 = Front(engine, limits, metrics, access_log, front_limits, "https", https=https)
    else:
        http1 = server = LimitedServer(
            traffic_handler(engine, access_log, metrics, https),
            limits,
            access_log=None,
            keepalive_timeout=node.keepalive_timeout,
        )
    # TLS first: once the plain port answers (what supervisors wait for), so does TLS
    tls_listener = (
        await start_tls_listener(
            fleet,
            node,
            _listen_socket(*split_host_port(node.tls_listen)),
            engine,
            http1,
            metrics,
            access_log,
            limits,
        )
        if node.tls_listen
        else None
    )
    if front_name == "httptools":
        traffic_server = await loop.create_server(
            front, sock=_listen_socket(host, port), backlog=1024
        )
    else:
        traffic_runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=5.0)
        await traffic_runner.setup()
        site = web.SockSite(traffic_runner, _listen_socket(host, port))
        await site.start()
        runners.append(traffic_runner)

    reload_fleet = on_hangup(loaded, engine, upstream, limits, worker, supervisor, metrics.reloads)
    reload_certificates = tls_listener.certificates.on_reload_signal() if tls_listener else None

    def on_sighup() -> None:
        """SIGHUP: the fleet file (passed on to the other workers), then certificates."""
        reload_fleet()
        if reload_certificates is not None:
            reload_certificates()

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    print(
        f"edgeshield {role.role} {node.name} worker {worker}: serving on {node.url}"
        + (f" and {node.tls_url}" if tls_listener is not None else "")
        + (f", admin on {node.admin_url}" if admin else ""),
        flush=True,
    )
    # what start-up made lives as long as the process: out of the collector's way, so
    # the objects of requests in flight (the access log's batch among them) do not
    # make each full collection walk it all again
    gc.freeze()
    await stop.wait()
    if supervisor is not None:
        await supervisor.stop()
    if tls_listener is not None:
        await tls_listener.close()
    if traffic_server is not None:
        traffic_server.close()
        for connection in list(limits.connections):
            connection.close_for_idle()
    for runner in reversed(runners):
        await runner.cleanup()
    await limits.stop()
    await engine.close()
    if reclaimer is not None:
        reclaimer.cancel()
    if scrubber is not None:
        scrubber.cancel()
    if follower is not None:
        follower.cancel()
    else:
        await sync.stop()
    await upstream.stop()
    if access_log:
        await access_log.stop()
    await session.close()
    for tls_session in tls_sessions:
        await tls_session.close()
    await store.close()


def front_of(node: NodeConfig) -> str:
    """The client-facing server a node runs: its `front` key, unless the environment
    variable EDGESHIELD_FRONT names one (so a whole test suite can run on either)."""
    chosen = os.environ.get("EDGESHIELD_FRONT", node.front)
    return chosen if chosen in FRONTS else node.front


def _lost(supervisor: WorkerSupervisor | None, number: int) -> None:
    if supervisor is not None:
        supervisor.lost(number)


def _count_workers(supervisor: WorkerSupervisor | None, metrics: NodeMetrics) -> None:
    if supervisor is not None:
        metrics.workers_live.set(supervisor.live)
        metrics.workers_expected.set(supervisor.expected)
        metrics.worker_restarts.value = supervisor.restarts


def _listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket shared by every worker of the node (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _admin_app(
    node: NodeConfig,
    secret: str,
    sync: PurgeSync,
    metrics: NodeMetrics,
    store: DiskStore,
    supervisor: WorkerSupervisor | None = None,
) -> web.Application:
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

    async def count(record: PurgeRecord) -> int:
        probe = PurgeRules(fleet.services)
        probe.apply_local(record, applied_at=float("inf"))
        keys = (await store.keys())[:MATCH_SCAN_LIMIT]
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
