"""The bearer check of node-to-node calls: `Authorization: Bearer <node secret>`.

The admin listeners of edges and shields (health, metrics, the purge intake) and the
purge API's pull endpoint for nodes all accept a caller that proves it holds the
shared node secret; this is that one check.
"""

from __future__ import annotations

import hmac

__all__ = ["bearer_matches"]


def bearer_matches(authorization: str | None, secret: str) -> bool:
    """Whether an Authorization field value is `Bearer <secret>` (RFC 6750 section 2.1).

    Compared in constant time (`hmac.compare_digest`) so the time taken does not tell
    how much of a guess was right. An empty secret matches nothing: a process started
    without its secret refuses every caller rather than accepting `Bearer `.
    """
    if not secret or authorization is None:
        return False
    given = authorization.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {secret}".encode())
