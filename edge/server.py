"""The edge role: `edgeshield edge --config F --node NAME`."""

from __future__ import annotations

from edge.node import EDGE, run_node
from fleet.config import Fleet


def serve_edge(fleet: Fleet, node_name: str) -> int:
    """Run the edge called `node_name` until SIGTERM/SIGINT."""
    return run_node(fleet, fleet.edge(node_name), EDGE)
