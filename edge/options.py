"""What the engine is given: its options (edge or shield) and its upstream seam.

Kept apart from the engine so the filling, responding and hot-lane modules can share
them without importing the driver.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Protocol

from multidict import CIMultiDict

from edge.forwarding import IPNetwork
from edge.upstream import UpstreamResponse
from fleet.config import Service

#: Marks an answer a shield served stale, so the edge below stores it as stale.
STALE_MARK = "X-Edgeshield-Stale"


class Upstream(Protocol):
    """The next tier, as the engine sees it."""

    async def fetch(
        self,
        service: Service,
        key: str,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        """Send a request on; raises UpstreamError when no answer can be had."""
        ...

    def failed(self, response: UpstreamResponse) -> None:
        """The peer behind `response` broke off a body: check whether it is still up."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """What distinguishes an edge from a shield."""

    node_name: str
    #: make br/gzip variants at fill time (edges); shields store what the origin sent
    compress: bool = True
    #: the downstream is one of our edges: pass CDN-only fields and surrogate keys on
    downstream_is_cdn: bool = False
    #: the value this node adds to CDN-Loop (RFC 8586) and looks for to detect loops
    cdn_loop_token: str = ""
    #: tell the downstream cache that an answer was served stale (shields)
    mark_stale: bool = False
    #: peers whose forwarding fields are kept ([security] trusted_proxies)
    trusted_proxies: tuple[IPNetwork, ...] = ()
    #: the node token by which our own nodes prove themselves (see edge.forwarding)
    node_token: str = ""
    #: store answers to requests with Cookie/Authorization on a heuristic lifetime
    heuristic_with_credentials: bool = False
