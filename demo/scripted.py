"""Scripted routes of the demo origin: a path answers exactly what a test set for it.

Tests need an origin whose answer to one path they choose (status, headers, a body of
a given size sent slowly, cut in the middle, or a 304 to a matching validator) and
whose request counts they read; the demo origin serves those beside its built-in
pages, and a scripted route takes precedence over a built-in one of the same path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["Route", "answer", "pattern_bytes"]

CHUNK = 64 * 1024


@dataclass
class Route:
    """What the origin answers for one path."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: generated body of this many bytes (streamed in chunks) instead of `body`
    size: int = 0
    #: seconds to wait before answering
    delay: float = 0.0
    #: seconds to wait between body chunks
    chunk_delay: float = 0.0
    #: stop after this many body bytes and drop the connection
    cut_after: int | None = None
    #: answer 304 to a matching If-None-Match (the tag is one member of its list)
    etag: str | None = None
    #: send the body chunked (no Content-Length)
    chunked: bool = False
    #: Link values of a 103 Early Hints sent before the answer (RFC 8297)
    early_hints: tuple[str, ...] = ()


def _members(value: str) -> list[str]:
    """The members of a comma-separated list field (entity-tags here, which hold no
    comma in these scripted routes)."""
    return [member.strip(" \t") for member in value.split(",")]


def pattern_bytes(size: int, offset: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes for large bodies: byte i of a body
    is the same whichever offset it is generated from, so ranges can be checked."""
    block = bytes((i * 31 + 7) % 251 for i in range(251))
    start = offset % 251
    return (block * (size // 251 + 2))[start : start + size]


async def answer(request: web.BaseRequest, route: Route) -> web.StreamResponse:
    """Answer `request` as `route` says."""
    if route.delay:
        await asyncio.sleep(route.delay)
    if route.early_hints and request.transport is not None:
        # aiohttp's server cannot send a 1xx: written ahead of its head
        links = "".join(f"Link: {link}\r\n" for link in route.early_hints)
        request.transport.write(f"HTTP/1.1 103 Early Hints\r\n{links}\r\n".encode("latin-1"))
    if route.etag and route.etag in _members(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers={"ETag": route.etag, **route.headers})
    headers = dict(route.headers)
    if route.etag:
        headers["ETag"] = route.etag
    if not route.size and not route.chunk_delay and route.cut_after is None and not route.chunked:
        return web.Response(status=route.status, headers=headers, body=route.body)
    size = route.size or len(route.body)
    if not route.chunked:
        headers["Content-Length"] = str(size)
    response = web.StreamResponse(status=route.status, headers=headers)
    await response.prepare(request)
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        data = route.body[sent : sent + n] if route.body else pattern_bytes(n, sent)
        if route.cut_after is not None and sent + n > route.cut_after:
            await response.write(data[: route.cut_after - sent])
            # let the bytes written so far leave before the connection is dropped
            await asyncio.sleep(0.05)
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write(data)
        sent += n
        if route.chunk_delay:
            await asyncio.sleep(route.chunk_delay)
    await response.write_eof()
    return response
