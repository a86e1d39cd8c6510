"""The HTTP/1.1 front's hit lane: a fresh hit in memory (or a small one the store
reads from disk without waiting) written inside the parser's callback, from a head
serialised once per stored entry and coding, with only Age, Cache-Status and (when
the origin sent none) Date written per response, and without building a request
object or a sink.

The same head is what a store that keeps ready answers (`edge.store.ready`) stores
with a small object when it is filled (`ReadyHeads`): a hit on it outside the
memory tier is then written from one `pread` of that answer."""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from edge.cache.model import ObjectMeta
from edge.front.h1_wire import JOIN_BELOW, header_block, status_line
from edge.front.types import RequestHead
from edge.hotlane import HotLane, PreparedHit
from edge.store.ready import ReadyHead, ReadyRecord

if TYPE_CHECKING:
    from edge.front.protocol import Front


#: the version of the ready answers' head: changed with anything that changes how a
#: head is made, so that answers stored by an earlier release are not used
READY_FORMAT = 3


def maker_tag(node_name: str) -> int:
    """The tag of ready answers made by this release for a node named `node_name`
    (its Via and Cache-Status name it): a record made under another name or
    format is not answered from."""
    return zlib.crc32(f"{READY_FORMAT} {node_name}".encode()) or 1


def serialise_head(headers: CIMultiDict[str], length: int) -> bytes:
    """A hit's head as stored and prepared: the fields up to Content-Length and the
    blank line. The status line and the fields set per response (Age,
    Cache-Status, Date, Connection) go before them."""
    return serialise_fields(headers) + b"Content-Length: %d\r\n\r\n" % length


def serialise_fields(headers: CIMultiDict[str]) -> bytes:
    """`serialise_head` less Content-Length and the blank line (a ready answer's
    record adds them with each body: `edge.store.ready.encode_record`)."""
    return "".join(header_block(headers)).encode("utf-8", "surrogateescape")


class ReadyHeads:
    """The maker of ready answers' heads (`DiskStore.ready_maker`): the heads a hit on
    the object would be written with in each of its codings, made when the object is
    stored, and again when its variants are added or its metadata refreshed."""

    def __init__(self, lane: HotLane, node_name: str) -> None:
        self.lane = lane
        self.tag = maker_tag(node_name)

    def __call__(self, meta: object, codings: tuple[str, ...], settled: bool) -> ReadyHead | None:
        """The ready answer's heads of a stored object with bodies in `codings`, or
        None for one the hit lane would not answer from memory either (revalidated
        every time, a Vary index). `settled`: the object has every coding it will
        get; a compressible object stored with identity alone is about to get its
        variants, and its answer's Vary is not settled until then."""
        if type(meta) is not ObjectMeta or meta.no_cache:
            return None
        if meta.compressible and not settled:
            return None
        heads: list[tuple[str, bytes]] = []
        has_date = False
        prefix = ""
        for coding in codings:
            headers, prefix = self.lane.answer_fields(meta, codings, coding)
            has_date = "Date" in headers
            heads.append((coding, serialise_fields(headers)))
        if not heads:
            return None
        return ReadyHead(tuple(heads), has_date, prefix, meta.status, self.tag)


class HitWriter:
    """One worker's writer of hot-lane hits, with the serialised heads it has made."""

    def __init__(self, front: Front) -> None:
        self.front = front
        engine = front.engine
        heads = ReadyHeads(engine.hot, engine.options.node_name)
        self.tag = heads.tag
        if hasattr(engine.store, "ready_maker"):
            # objects stored from now on get a ready answer with the head of a hit
            engine.store.ready_maker = heads

    def wire(self, prepared: PreparedHit) -> tuple[bytes, bool]:
        """A prepared hit's head as bytes (`serialise_head`), and whether it carries
        its own Date."""
        # kept on the prepared hit itself, so it goes when the hot lane drops it (a
        # table here held every prepared hit, and its entry, beyond the memory tier)
        found = prepared.heads.get("h1")
        if found is not None:
            return found
        head = serialise_head(prepared.headers, len(prepared.body))
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
        # a small object read from disk without waiting is answered here too, from
        # its ready answer when it has one
        found = front.engine.hot.answer_at_once(head, True, self.tag)
        if found is None:
            return False
        prepared, age, outcome, member = found
        body: bytes | None
        if type(prepared) is ReadyRecord:
            # its stored head and body are one slice of the record
            stored, has_date, body = prepared.answer, prepared.has_date, None
            sent = prepared.body_length
        else:
            assert isinstance(prepared, PreparedHit)
            stored, has_date = self.wire(prepared)
            body = prepared.body
            sent = len(body)
        # the per-response fields go right after the status line, before the stored
        tail = b"Age: %d\r\nCache-Status: %s\r\n" % (int(age), member.encode())
        if not has_date:
            tail += b"Date: " + front.clock.date() + b"\r\n"
        if head.version != (1, 1):
            first = status_line("1.0", prepared.status)
            tail += b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n"
        else:
            first = status_line("1.1", prepared.status)
            if not keep_alive:
                tail += b"Connection: close\r\n"
        if body is None:
            transport.write(b"".join((first, tail, stored)))
        elif len(body) < JOIN_BELOW:
            transport.write(b"".join((first, tail, stored, body)))
        else:
            transport.writelines((b"".join((first, tail, stored)), body))
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
                    sent,
                    elapsed,
                    peer,
                    front.proto,
                    headers.get("User-Agent"),
                    headers.get("Referer"),
                    headers.get("X-Request-ID"),
                )
            )
        return True
