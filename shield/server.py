"""The shield role: `edgeshield shield --config F --node NAME`.

The same engine as the edge (not a copy): it stores what the origin sent without
compressing, passes CDN-only fields and surrogate keys on to the edges, marks answers
it served stale so edges never store them as fresh, and its upstream is the service's
origin pool (health checks, failover, a cap on concurrent origin requests).
"""

from __future__ import annotations

from edge.node import SHIELD, run_node
from fleet.config import Fleet


def serve_shield(fleet: Fleet, node_name: str) -> int:
    """Run the shield called `node_name` until SIGTERM/SIGINT."""
    return run_node(fleet, fleet.shield(node_name), SHIELD)
