"""The answers a node makes itself: its own errors and refusals, each a status and a
short reason (never an internal address, never much of the client's input), with
the Cache-Status of the request's Outcome."""

from __future__ import annotations

from multidict import CIMultiDict

from edge.front.types import ResponseSink
from edge.outcome import ErrorSource, Outcome, refused
from edge.upstream import GENERATED_ERROR_HEADER, UNREACHABLE


def error_response(
    sink: ResponseSink,
    status: int,
    reason: str,
    outcome: Outcome,
    node: str,
    *,
    unreachable: bool = False,
    retry_after: int | None = None,
) -> Outcome:
    """An error this node answers: a short reason, never an internal address (those
    go to the log). `unreachable`: it answers for an origin that could not be reached."""
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "text/plain; charset=utf-8"})
    if outcome.error is ErrorSource.UPSTREAM:
        # this node answered for a failure beyond it (origin down, origin connection
        # cap); the tier below passes such errors on instead of failing over
        headers[GENERATED_ERROR_HEADER] = "upstream"
    if unreachable:
        # the origin could not be reached at all: a tier below that holds a stale
        # copy may serve it (RFC 9111 4.2.4), as for its own connect failure
        headers[GENERATED_ERROR_HEADER] = UNREACHABLE
    headers["Cache-Status"] = outcome.cache_status(node)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    sink.send(status, headers, f"{status} {reason}\n".encode())
    return outcome


def refuse(sink: ResponseSink, status: int, reason: str, detail: str) -> Outcome:
    """A 4xx for a request we will not handle; the connection is closed after it, since
    the rest of what the client sent (an unread body) cannot be trusted as framing."""
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "text/plain; charset=utf-8"})
    sink.send(status, headers, f"{status} {reason}\n".encode(), close=True)
    return refused(detail)


def detail_token(reason: str) -> str:
    """A short reason as a Cache-Status detail token ("origin unreachable" →
    "origin-unreachable")."""
    return "-".join(reason.split()) or "error"
