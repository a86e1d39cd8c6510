"""The next tier: the shield ring for edges, the origin pool for shields (and fallback).

Both expose `request()` returning an `UpstreamResponse` whose body is still streaming,
and raise `UpstreamError` (ours) for failures; aiohttp's exceptions stop here.

- `ShieldRing` picks the shield for a cache key by rendezvous hashing (highest random
  weight), so every edge asks the same shield for the same key and removing one of N
  shields moves only that shield's 1/N of the keys. A shield that refuses connections
  or times out is marked down (passive) and probed on its admin `/healthz` (active).
- `OriginPool` spreads a service's requests over its origins (round robin or least
  outstanding), ejects failing ones (passive and active health checks, a circuit per
  origin), retries idempotent requests on another origin after a connect failure, and
  caps concurrent origin requests with a bounded queue (503 + Retry-After beyond it).

This module is the one name callers import; the code lives in `edge.shield_ring`,
`edge.origin_pool`, `edge.upstream_wire` (the response and error types, aiohttp's
send), `edge.upstream_client` (the lean client of bodiless requests to plain-http
peers) and `edge.upstream_session` (the session and the send that picks a client).
"""

from __future__ import annotations

from edge.origin_pool import OriginPool
from edge.shield_ring import ShieldRing, rendezvous_order
from edge.upstream_session import make_session
from edge.upstream_wire import (
    BODY_POLL,
    GENERATED_ERROR_HEADER,
    IDEMPOTENT,
    UNREACHABLE,
    UpstreamError,
    UpstreamResponse,
)

__all__ = [
    "BODY_POLL",
    "GENERATED_ERROR_HEADER",
    "IDEMPOTENT",
    "UNREACHABLE",
    "OriginPool",
    "ShieldRing",
    "UpstreamError",
    "UpstreamResponse",
    "make_session",
    "rendezvous_order",
]
