"""One exchange of the HTTP/1.1 front: a parsed request taken through the engine (or
the services' https redirect), its failures turned into a short answer or a cut, and
the answer counted and logged; the connection decides what follows it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from edge.accesslog import request_id
from edge.front.h1_sink import FrontSink
from edge.front.h1_wire import BodyTimeout, FrameError
from edge.front.https_policy import HTTPS_REDIRECT
from edge.front.request_body import RequestBody
from edge.front.types import NoBody, RequestHead
from edge.outcome import refused
from edge.upstream import GENERATED_ERROR_HEADER

if TYPE_CHECKING:
    from edge.front.protocol import FrontProtocol

log = logging.getLogger("edgeshield.node")


class Exchange:
    """One parsed request waiting for (or being given) its answer."""

    __slots__ = ("body", "head", "keep_alive", "refusal")

    def __init__(
        self,
        head: RequestHead | None,
        body: RequestBody | NoBody,
        keep_alive: bool,
        refusal: FrameError | None = None,
    ) -> None:
        self.head = head
        self.body = body
        self.keep_alive = keep_alive
        self.refusal = refusal


async def answer(connection: FrontProtocol, exchange: Exchange) -> bool:
    """One request through the engine; whether the connection stays open."""
    head = exchange.head
    if head is None:
        assert exchange.refusal is not None
        connection.write_refusal(exchange.refusal)
        return False
    front = connection.front
    sink = FrontSink(connection, head, exchange.keep_alive, exchange.body)
    started = time.time()
    rid = request_id(head.headers)
    body = exchange.body
    try:
        redirect = front.https.redirect(head) if front.https is not None else None
        if redirect is not None:
            sink.send(*redirect)
            outcome = HTTPS_REDIRECT
        else:
            if front.https is not None:
                sink.hsts = front.https.hsts(head)
            outcome = await front.engine.handle(head, body, sink)
        if sink.status == 0:
            raise RuntimeError("the engine returned without answering")
    except (ConnectionError, asyncio.CancelledError) as error:
        if isinstance(error, asyncio.CancelledError):
            raise
        outcome = refused("client-gone")
        if sink.status == 0 and not connection.lost:
            failure = body.error if isinstance(body, RequestBody) else None
            if isinstance(failure, BodyTimeout):
                connection.write_short(408, "request body timed out")
            elif isinstance(failure, FrameError):
                connection.write_refusal(failure)
        sink.close = True
    except Exception:
        log.exception("request %s %s failed", head.method, head.target[:200])
        outcome = refused("internal-error")
        if sink.status == 0 and not connection.lost:
            # "node": this node itself failed, so an edge may try another shield
            with contextlib.suppress(ConnectionError):
                sink.send(
                    500,
                    CIMultiDict({"Content-Type": "text/plain", GENERATED_ERROR_HEADER: "node"}),
                    b"500 internal error\n",
                    close=True,
                )
            sink.close = True
        else:
            sink.abort()
    elapsed = time.time() - started
    front.metrics.responded(head.headers.get("Host"), sink.status)
    if outcome.hit:
        front.metrics.hit_seconds.observe(elapsed)
    else:
        front.metrics.miss_seconds.observe(elapsed)
    if front.access_log is not None:
        front.access_log.record(
            (
                started,
                head.method,
                head.headers.get("Host"),
                head.target,
                sink.status,
                outcome,
                sink.length,
                elapsed,
                connection.peer,
                front.proto,
                head.headers.get("User-Agent"),
                head.headers.get("Referer"),
                rid,
            )
        )
    if isinstance(body, RequestBody) and not body.complete:
        # the rest of the body is unread, so what follows is not a request head
        return False
    return not sink.close and not connection.lost
