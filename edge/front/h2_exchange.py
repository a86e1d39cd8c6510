"""One HTTP/2 request as the engine sees it: the stream's header fields made our
`RequestHead` (pseudo-fields, split cookies, :authority), and the engine's run on it,
a failure answered or cut, the answer counted and logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from edge.accesslog import request_id
from edge.front.h2_stream import H2Body, H2Sink, H2Stream
from edge.front.types import RequestHead
from edge.outcome import refused
from edge.upstream import GENERATED_ERROR_HEADER

if TYPE_CHECKING:
    from edge.front.h2_protocol import H2Protocol

log = logging.getLogger("edgeshield.h2")


def request_head(
    fields: Iterable[tuple[bytes | str, bytes | str]], peer: str | None, scheme: str
) -> RequestHead:
    """A request stream's decoded header list as our `RequestHead`."""
    method = target = authority = ""
    headers: CIMultiDict[str] = CIMultiDict()
    cookies: list[str] = []
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        if name.startswith(":"):
            if name == ":method":
                method = value
            elif name == ":path":
                target = value
            elif name == ":authority":
                authority = value
        elif name == "cookie":
            cookies.append(value)
        else:
            headers.add(name, value)
    if cookies:
        # RFC 9113 8.2.3: split cookie fields are joined with "; " for HTTP/1.1
        headers["Cookie"] = "; ".join(cookies)
    if authority and "host" not in headers:
        # RFC 9113 8.3.1: :authority stands for Host
        headers["Host"] = authority
    return RequestHead(method, target, headers, peer, scheme, (2, 0))


async def serve_stream(
    protocol: H2Protocol, stream: H2Stream, head: RequestHead, body: H2Body
) -> None:
    """Run the engine on one stream (the stream's task)."""
    sink = H2Sink(protocol, stream)
    started = time.time()
    rid = request_id(head.headers)
    try:
        outcome = await protocol.engine.handle(head, body, sink)
    except (ConnectionResetError, asyncio.CancelledError):
        protocol.finished(stream)
        return
    except Exception:
        log.exception("request %s %s failed", head.method, head.target[:200])
        if sink.started:
            sink.abort()
        else:
            headers = CIMultiDict({GENERATED_ERROR_HEADER: "node"})
            sink.send(500, headers, b"500 internal error\n")
        outcome = refused("internal-error")
    elapsed = time.time() - started
    if outcome.hit:
        protocol.metrics.hit_seconds.observe(elapsed)
    else:
        protocol.metrics.miss_seconds.observe(elapsed)
    protocol.metrics.responded(head.headers.get("Host"), stream.status)
    if protocol.access_log is not None:
        protocol.access_log.record(
            (
                started,
                head.method,
                head.headers.get("Host"),
                head.target,
                stream.status,
                outcome,
                stream.sent_bytes,
                elapsed,
                head.peer,
                "h2",
                head.headers.get("User-Agent"),
                head.headers.get("Referer"),
                rid,
            )
        )
    protocol.finished(stream)
