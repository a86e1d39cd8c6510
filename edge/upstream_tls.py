"""How a node verifies the https peers it fetches from: shields and origins.

Shields are verified against `[security] node_ca` only (a public CA cannot vouch for a
node of ours); an origin against the system store or its service's `origin_ca`, and
never left unverified unless the service says `origin_tls_verify = false` (which
`edgeshield check` warns about).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping

import aiohttp

from edge.upstream import OriginPool, ShieldRing
from fleet.config import Fleet, Service

__all__ = ["origin_context", "shield_context", "use_tls_upstreams"]


def shield_context(fleet: Fleet) -> ssl.SSLContext | None:
    """The client context for reaching shields over TLS (None: plain HTTP)."""
    if not fleet.security.node_ca:
        return None
    context = ssl.create_default_context(cafile=fleet.security.node_ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def origin_context(service: Service) -> ssl.SSLContext | bool | None:
    """How `service`'s https origins are verified: a context with its `origin_ca`,
    False when verification is off, None for the default (the system store)."""
    if not service.origin_tls_verify:
        return False
    if service.origin_ca:
        return ssl.create_default_context(cafile=service.origin_ca)
    return None


def use_tls_upstreams(
    fleet: Fleet,
    ring: ShieldRing | None,
    pools: Mapping[str, OriginPool],
    make_session: Callable[[ssl.SSLContext | bool], aiohttp.ClientSession],
    make_ring_session: Callable[[ssl.SSLContext | bool], aiohttp.ClientSession] | None = None,
) -> list[aiohttp.ClientSession]:
    """Give the ring and the origin pools that need it a session verifying as above
    (the ring's from `make_ring_session` when given: its timeouts differ); returns
    the sessions made (the node closes them when it stops)."""
    made: list[aiohttp.ClientSession] = []
    context = shield_context(fleet)
    if ring is not None and context is not None:
        ring.session = (make_ring_session or make_session)(context)
        ring.tls = True
        made.append(ring.session)
    for service in fleet.services:
        origin = origin_context(service)
        if origin is not None and service.name in pools:
            session = make_session(origin)
            pools[service.name].session = session
            made.append(session)
    return made
