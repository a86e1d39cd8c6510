"""What became of one request at this node: one value, read three ways.

The engine decides a request's `Outcome` once; from it come this node's member of
the Cache-Status field (RFC 9211), the latency histogram it is counted in, and the
access log's `cache` and `upstream_ms` fields. Nothing parses the Cache-Status string back.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class ErrorSource(Enum):
    """Who an error answer is about."""

    #: a failure beyond this node (origin down, an upstream's error relayed)
    UPSTREAM = "upstream"
    #: this node's own answer: a refused request (400, 421), a loop (508), a
    #: only-if-cached miss (504), or its own failure (500)
    NODE = "node"


class Outcome(NamedTuple):
    """How one request was answered (the parameters of RFC 9211 2).

    A named tuple: one is made per request, the fast lane's included, and a tuple is
    the cheapest immutable value Python makes."""

    #: answered from this node's store ("hit"), fresh or stale
    hit: bool = False
    #: why the request went upstream (RFC 9211 2.2: uri-miss, vary-miss, miss,
    #: stale, request); empty for a hit or an answer made here
    fwd: str = ""
    #: joined a fill another request started
    collapsed: bool = False
    #: RFC 9211 2.8: more about the outcome (stale-while-revalidate, not-storable...)
    detail: str = ""
    #: RFC 9211 2.3: the status the next tier answered
    fwd_status: int | None = None
    #: RFC 9211 2.4: seconds of freshness left
    ttl: int | None = None
    #: RFC 9211 2.5: the answer was stored
    stored: bool = False
    #: the answer is an error, and whose
    error: ErrorSource | None = None
    #: seconds this request waited for the upstream's response head (a miss or a
    #: pass; a collapsed request, the part of the fill it waited for); None when it
    #: did not go upstream. The access log's `upstream_ms`; not part of Cache-Status
    upstream_seconds: float | None = None

    def member(self) -> str:
        """The parameters of this node's Cache-Status member (after its name)."""
        if self.hit:
            text = f"hit; ttl={self.ttl}"
            return f"{text}; detail={self.detail}" if self.detail else text
        parts = [f"fwd={self.fwd}"] if self.fwd else []
        if self.collapsed:
            parts.append("collapsed")
        if self.detail:
            parts.append(f"detail={self.detail}")
        if self.fwd_status is not None:
            parts.append(f"fwd-status={self.fwd_status}")
        if self.ttl is not None:
            parts.append(f"ttl={self.ttl}")
        if self.stored:
            parts.append("stored")
        return "; ".join(parts)

    def cache_status(self, node: str, upstream: str = "") -> str:
        """The whole Cache-Status field: the tiers above (`upstream`), then this node."""
        own = f"{node}; {self.member()}" if self.member() else node
        return f"{upstream}, {own}" if upstream else own

    @property
    def metric(self) -> str:
        """The latency histogram this request is counted in: "hit" or "miss"."""
        return "hit" if self.hit else "miss"


#: The outcome of a request this node refused before any lookup.
def refused(detail: str) -> Outcome:
    """A request this node answered itself with an error (`detail`: why)."""
    return Outcome(detail=detail, error=ErrorSource.NODE)


_new_tuple = tuple.__new__


def fresh_hit(ttl: int) -> Outcome:
    """A fresh hit with `ttl` seconds of freshness left: `Outcome(hit=True, ttl=ttl)`
    made in one C call (the hit lanes make one per hit; the keyword form costs
    about 250 ns)."""
    return _new_tuple(Outcome, (True, "", False, "", None, ttl, False, None, None))
