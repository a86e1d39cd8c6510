"""Traffic rules' rate limits: the client a limit counts a request against, token
buckets kept per node (bounded), Retry-After, and the client-address test of a
network list. Pure: `now` is an argument."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection

from edge.cache.headers import Headers
from edge.cache.rule_match import cookie_value
from fleet.rules import RateLimit

#: distinct client keys a rate limit tracks; beyond that, the fullest buckets go first
MAX_BUCKETS = 100_000


def limit_key(limit: RateLimit, peer: str | None, headers: Headers) -> str:
    """The client a rate limit counts this request against (empty header or cookie:
    counted together, as one client)."""
    if limit.key == "client_ip":
        return peer or ""
    if limit.key == "header":
        return headers.get(limit.key_name) or ""
    return cookie_value(headers, limit.key_name) or ""


class RateLimiter:
    """Token buckets (one per rate limit and client key), counted on this node only.

    Each bucket holds up to `burst` tokens and refills at `rate` per second; a request
    takes one. State is two floats per bucket, refilled lazily at `take`, so an idle
    client costs nothing; at most `max_buckets` are kept (full buckets go first, which
    forgets nothing: a full bucket is what a new one is).
    """

    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        #: (limit index, client) → (tokens, when counted, the limit's rate and burst)
        self._buckets: dict[tuple[int, str], tuple[float, float, float, int]] = {}
        self._max = max_buckets

    def take(self, limit: RateLimit, client: str, now: float) -> float:
        """Take a token: 0.0 if the request may go now, else the seconds until one is
        there (the token is then not taken; a delayed request takes it again later)."""
        bucket = (limit.index, client)
        rate, burst = limit.rate, limit.burst
        tokens, at, _, _ = self._buckets.get(bucket, (float(burst), now, rate, burst))
        tokens = min(float(burst), tokens + max(0.0, now - at) * rate)
        if bucket not in self._buckets and len(self._buckets) >= self._max:
            self._evict(now)
        if tokens >= 1.0:
            self._buckets[bucket] = (tokens - 1.0, now, rate, burst)
            return 0.0
        self._buckets[bucket] = (tokens, now, rate, burst)
        return (1.0 - tokens) / rate

    def _evict(self, now: float) -> None:
        """Drop the buckets that have refilled (or the older half if none has)."""
        full = [
            k
            for k, (tokens, at, rate, burst) in self._buckets.items()
            if tokens + (now - at) * rate >= burst
        ]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait: float) -> int:
    """Retry-After seconds (RFC 9110 10.2.3) for a wait: whole seconds, at least 1."""
    return max(1, math.ceil(wait))


def in_networks(
    peer: str | None, networks: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether `peer` is an address inside one of `networks`."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in networks)
