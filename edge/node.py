"""A caching node's process: store, engine, purge sync, traffic and admin listeners.

Edge and shield both run `run_node`; they pass different `EngineOptions` and a
different upstream. The traffic listener serves only the fleet's hosts; the admin
listener (apart, node secret required) has `/healthz`, `/metrics` and the purge intake.

This module is the process's start and stop sequence; the next tier is
`tier_upstream.py`, the admin listener `node_admin.py`, the client-facing listeners
`node_listeners.py`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edge.accesslog import open_access_log
from edge.cache.purge import MAX_RULE_AGE, PurgeRules
from edge.engine import Engine, EngineOptions
from edge.forwarding import node_token
from edge.inspection import cache_view
from edge.metrics import NodeMetrics
from edge.node_admin import MATCH_SCAN_LIMIT, admin_app, match_counter, start_admin_listener
from edge.node_listeners import TrafficListeners, front_of
from edge.purge_sync import PurgeSync
from edge.reclaim import reclaim_purged_forever
from edge.reload import on_hangup
from edge.scrub import scrub_forever
from edge.store import DiskStore
from edge.tier_upstream import TierUpstream, shield_read_timeout
from edge.upstream import ShieldRing, make_session
from edge.upstream_tls import use_tls_upstreams
from edge.workers import RelayFollower, WorkerRelay, WorkerSupervisor, worker_argv
from fleet.config import Fleet, NodeConfig, load_fleet, node_secret
from runtime.collector import YOUNG_GC_THRESHOLD, CollectorPacer, tune_collector
from runtime.errors import install_repeat_filter

__all__ = [
    "EDGE",
    "MATCH_SCAN_LIMIT",
    "SHIELD",
    "YOUNG_GC_THRESHOLD",
    "NodeRole",
    "TierUpstream",
    "front_of",
    "match_counter",
    "run_node",
    "run_worker",
    "tune_collector",
]

log = logging.getLogger("edgeshield.node")


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
    connect_timeout = min((s.connect_timeout for s in fleet.services), default=2.0)
    read_timeout = max((s.read_timeout for s in fleet.services), default=30.0)
    session = make_session(connect_timeout, read_timeout)
    shield_wait = shield_read_timeout(fleet.services)
    sessions = [session]
    ring = None
    if role.uses_shields and fleet.shields:
        ring_session = make_session(connect_timeout, shield_wait)
        sessions.append(ring_session)
        ring = ShieldRing(fleet.shields, ring_session, secret)
    upstream = TierUpstream(fleet.services, ring, session, node.workers)
    sessions += use_tls_upstreams(
        fleet,
        ring,
        upstream.pools,
        lambda tls: make_session(connect_timeout, read_timeout, tls),
        lambda tls: make_session(connect_timeout, shield_wait, tls),
    )
    access_log = open_access_log(node.access_log, node.name)
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

    admin_runner: web.BaseRunner | None = None
    if admin:
        app = admin_app(node, secret, sync, metrics, store, supervisor)
        app.router.add_get("/v1/cache", cache_view(lambda: loaded[0].services, store, rules))
        admin_runner = await start_admin_listener(app, node)
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

    listeners = await TrafficListeners.start(fleet, node, engine, metrics, access_log)
    tls_listener = listeners.tls
    limits = listeners.limits

    reload_fleet = on_hangup(loaded, engine, upstream, limits, worker, supervisor, metrics.reloads)
    reload_certificates = tls_listener.certificates.on_reload_signal() if tls_listener else None

    def on_sighup() -> None:
        """SIGHUP: the fleet file (passed on to the other workers), then certificates,
        then the access log's file."""
        reload_fleet()
        if reload_certificates is not None:
            reload_certificates()
        if access_log is not None:
            access_log.reopen()  # a log file moved by logrotate

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    print(
        f"edgeshield {role.role} {node.name} worker {worker}: serving on {node.url}"
        + (f" and {node.tls_url}" if tls_listener is not None else "")
        + (f", admin on {node.admin_url}" if admin else ""),
        flush=True,
    )
    tune_collector()
    pacer = CollectorPacer()
    pacer.start()
    await stop.wait()
    await pacer.stop()
    if supervisor is not None:
        await supervisor.stop()
    await listeners.close()
    if admin_runner is not None:
        await admin_runner.cleanup()
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
    for upstream_session in sessions:
        await upstream_session.close()
    await store.close()


def _lost(supervisor: WorkerSupervisor | None, number: int) -> None:
    if supervisor is not None:
        supervisor.lost(number)


def _count_workers(supervisor: WorkerSupervisor | None, metrics: NodeMetrics) -> None:
    if supervisor is not None:
        metrics.workers_live.set(supervisor.live)
        metrics.workers_expected.set(supervisor.expected)
        metrics.worker_restarts.value = supervisor.restarts
