"""The HTTP/1.1 front's hit lane: a fresh hit in memory (or a small one the store
reads from disk without waiting) written inside the parser's callback, from a head
serialised once per stored entry and coding, with only Age, Cache-Status and (when
the origin sent none) Date written per response, and without building a request
object or a sink."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from edge.front.h1_wire import JOIN_BELOW, header_block, status_line
from edge.front.types import RequestHead

if TYPE_CHECKING:
    from edge.front.protocol import Front
    from edge.hotlane import PreparedHit


class HitWriter:
    """One worker's writer of hot-lane hits, with the serialised heads it has made."""

    def __init__(self, front: Front) -> None:
        self.front = front

    def wire(self, prepared: PreparedHit) -> tuple[bytes, bool]:
        """A prepared hit's head as bytes (status line to Content-Length), and whether
        it carries its own Date."""
        # kept on the prepared hit itself, so it goes when the hot lane drops it (a
        # table here held every prepared hit, and its entry, beyond the memory tier)
        found = prepared.heads.get("h1")
        if found is not None:
            return found
        lines = header_block(prepared.headers)
        lines.append(f"Content-Length: {len(prepared.body)}\r\n")
        head = status_line("1.1", prepared.status) + "".join(lines).encode(
            "utf-8", "surrogateescape"
        )
        has_date = "Date" in prepared.headers
        prepared.heads["h1"] = (head, has_date)
        return head, has_date

    def answer(
        self,
        transport: asyncio.Transport,
        head: RequestHead,
        keep_alive: bool,
        peer: str | None,
    ) -> bool:
        """Answer a fresh in-memory hit at once from its prepared head; False when the
        hot lane cannot answer it."""
        front = self.front
        started = time.time()
        # a small object read from disk without waiting is answered here too
        found = front.engine.hot.prepared_hit(head, disk=True)
        if found is None:
            return False
        prepared, age, outcome, member = found
        wire, has_date = self.wire(prepared)
        tail = b"Age: %d\r\nCache-Status: %s\r\n" % (int(age), member.encode())
        if not has_date:
            tail += b"Date: " + front.clock.date() + b"\r\n"
        if head.version != (1, 1):
            # the prepared head is HTTP/1.1's
            wire = status_line("1.0", prepared.status) + wire[wire.index(b"\r\n") + 2 :]
            tail += (
                b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n"
            )
        elif not keep_alive:
            tail += b"Connection: close\r\n\r\n"
        else:
            tail += b"\r\n"
        body = prepared.body
        if len(body) < JOIN_BELOW:
            transport.write(wire + tail + body)
        else:
            transport.writelines((wire, tail, body))
        elapsed = time.time() - started
        front.metrics.hit_seconds.observe(elapsed)
        front.metrics.responded(head.headers.get("Host"), prepared.status)
        log_ = front.access_log
        if log_ is not None:
            headers = head.headers
            # the client's fields as sent: bounded, and the id settled, off this path
            log_.record(
                (
                    started,
                    "GET",
                    headers.get("Host"),
                    head.target,
                    prepared.status,
                    outcome,
                    len(body),
                    elapsed,
                    peer,
                    front.proto,
                    headers.get("User-Agent"),
                    headers.get("Referer"),
                    headers.get("X-Request-ID"),
                )
            )
        return True
