"""Reloading a running node's fleet.toml on SIGHUP, without dropping a connection.

What a node can take live: the services (hosts, origins, cache rules, limits of
objects and origin connections) and its own connection limits. What it cannot: its
listen and admin addresses, its cache directory and sizes, its worker count and its
access log (sockets, the store and the log are open); a new file that changes one of
those is refused whole, with a message naming the table and key, and the node keeps
running on the file it had. A file that does not load is refused the same way. Changes to other
nodes, the purge API, GeoDNS or the security table are applied at the next start.

Worker 0 passes SIGHUP on to its other workers; each process reloads by itself.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge.engine import Engine
from edge.limits import ConnectionLimits
from edge.metrics import Count
from edge.workers import WorkerSupervisor
from fleet.config import ConfigError, Fleet, NodeConfig, Service, load_fleet

__all__ = ["RESTART_KEYS", "ReloadPlan", "apply_reload", "on_hangup", "plan_reload"]

log = logging.getLogger("edgeshield.reload")

#: A node's keys that only a restart changes (sockets, the store, the processes).
RESTART_KEYS = (
    "listen",
    "admin_listen",
    "cache_dir",
    "cache_size",
    "memory_size",
    "workers",
    "access_log",
)


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does: the new fleet and node to apply, or why it is refused."""

    fleet: Fleet | None
    node: NodeConfig | None
    refused: str = ""
    #: tables changed that apply only at the next start (said in the log)
    at_restart: tuple[str, ...] = ()


def plan_reload(source: str, current: Fleet, node: NodeConfig) -> ReloadPlan:
    """Read `source` again and decide what of it this running node may apply."""
    try:
        fleet = load_fleet(source)
    except ConfigError as exc:
        return ReloadPlan(None, None, f"the file does not load: {exc}")
    except OSError as exc:
        return ReloadPlan(None, None, f"{source}: {exc.strerror or exc}")
    table = "shields" if node in current.shields else "edges"
    try:
        new = fleet.shield(node.name) if table == "shields" else fleet.edge(node.name)
    except ConfigError:
        return ReloadPlan(None, None, f"[[{table}]] {node.name} is no longer in {source}")
    for key in RESTART_KEYS:
        if getattr(new, key) != getattr(node, key):
            return ReloadPlan(
                None,
                None,
                f"[[{table}]] {node.name}: {key} changed ({getattr(node, key)!r} -> "
                f"{getattr(new, key)!r}); that needs a restart",
            )
    later = tuple(
        name
        for name in ("shields", "edges", "purge_api", "geo", "security", "regions")
        if _others(getattr(fleet, name), node.name) != _others(getattr(current, name), node.name)
    )
    return ReloadPlan(fleet, new, at_restart=later)


def _others(value: object, name: str) -> object:
    """A table of the fleet without this node's own entry (compared apart)."""
    if isinstance(value, tuple):
        return tuple(item for item in value if getattr(item, "name", None) != name)
    return value


class _Reconfigurable(Protocol):
    async def reconfigure(self, services: tuple[Service, ...]) -> None: ...


async def apply_reload(
    loaded: list[Any],
    engine: Engine,
    upstream: _Reconfigurable,
    limits: ConnectionLimits,
    worker: int,
) -> Fleet | None:
    """Reload `loaded` = [fleet, node] from the fleet's file into the running engine,
    upstream and limits (each process of the node does this itself); the new fleet, or
    None if the reload was refused (logged with the reason, the node unchanged)."""
    fleet, node = loaded
    plan = plan_reload(fleet.source, fleet, node)
    if plan.fleet is None or plan.node is None:
        if worker == 0:
            log.error("reload refused, still running the previous file: %s", plan.refused)
        return None
    engine.reconfigure(plan.fleet.services)
    await upstream.reconfigure(plan.fleet.services)
    limits.max_connections = ConnectionLimits.worker_share(
        plan.node.max_connections, plan.node.workers
    )
    limits.head_timeout = plan.node.head_timeout
    loaded[:] = [plan.fleet, plan.node]
    if worker == 0:
        later = f" ({', '.join(plan.at_restart)} changes apply at the next start)"
        log.info(
            "reloaded %s: %d services%s",
            fleet.source,
            len(plan.fleet.services),
            later if plan.at_restart else "",
        )
    return plan.fleet


def on_hangup(
    loaded: list[Any],
    engine: Engine,
    upstream: _Reconfigurable,
    limits: ConnectionLimits,
    worker: int,
    supervisor: WorkerSupervisor | None,
    applied: Count,
) -> Callable[[], None]:
    """The SIGHUP handler of a node's process: pass the signal on to the other
    workers (worker 0), reload in the background, count what worker 0 applied."""
    running: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        if supervisor is not None:
            supervisor.signal_all(signal.SIGHUP)
        if await apply_reload(loaded, engine, upstream, limits, worker) is not None and not worker:
            applied.inc()

    def handler() -> None:
        task = asyncio.get_running_loop().create_task(reload())
        running.add(task)
        task.add_done_callback(running.discard)

    return handler
