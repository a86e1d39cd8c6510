"""Objects of a requested size, for benchmarks: `/json/{size}`, `/bin/{size}`, `/stream/{size}`.

Every answer carries `Cache-Control: public, max-age=3600`, so after one fill every
request a benchmark makes is a cache hit. The origin never compresses: a CDN under
test compresses from the same identity body.

    GET /json/{size}   compressible JSON-like text (application/json) of `size` bytes
    GET /bin/{size}    incompressible bytes (application/octet-stream) of `size` bytes
    GET /stream/{size} `size` bytes sent in 256 KiB chunks, never held whole (up to 1 GiB
                       and beyond, for memory measurements)

`size` is bytes or a number followed by k, m or g (KiB, MiB, GiB).
"""

from __future__ import annotations

import json
import os
import random
import re

from aiohttp import web

__all__ = ["MAX_BODY", "add_sized_routes", "json_body", "parse_size"]

CACHE_CONTROL = "public, max-age=3600"
STREAM_CHUNK = 256 * 1024
#: the largest /json or /bin body (built once and kept in memory)
MAX_BODY = 64 * 1024**2
#: the most bytes of bodies kept between requests; beyond, bodies are made per request
MAX_KEPT = 256 * 1024**2
#: the largest /stream body (never held whole)
MAX_STREAM = 64 * 1024**3
_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE = re.compile(r"([0-9]{1,12})([kmg]?)")

BODIES = web.AppKey("sized_bodies", dict[tuple[str, int], bytes])
BLOCK = web.AppKey("sized_block", bytes)


def parse_size(text: str) -> int | None:
    """Bytes from "1024", "1k", "100k", "1m" or "1g" (binary units); None if malformed."""
    match = _SIZE.fullmatch(text.lower())
    if match is None:
        return None
    return int(match.group(1)) * _UNITS.get(match.group(2), 1)


def json_body(size: int) -> bytes:
    """Deterministic JSON-like text of exactly `size` bytes (compresses about 4:1)."""
    rng = random.Random(size)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    items = []
    total = 2
    index = 0
    while total < size:
        item = json.dumps(
            {
                "id": index,
                "name": f"{rng.choice(words)}-{rng.choice(words)}",
                "price": round(rng.uniform(1, 500), 2),
                "tags": rng.sample(words, 3),
                "stock": rng.randint(0, 1000),
            }
        )
        items.append(item)
        total += len(item) + 1
        index += 1
    text = ("[" + ",".join(items) + "]").encode()
    if len(text) >= size:
        return text[: size - 1] + b"]"
    return text + b" " * (size - len(text))


def add_sized_routes(app: web.Application) -> None:
    """Serve the sized objects from `app`."""
    app[BODIES] = {}
    app[BLOCK] = os.urandom(STREAM_CHUNK)
    app.router.add_get(r"/{kind:json|bin}/{size}", _fixed)
    app.router.add_get("/stream/{size}", _stream)


async def _fixed(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    size = parse_size(request.match_info["size"])
    if size is None or size > MAX_BODY:
        return web.Response(status=404, text=f"sizes up to {MAX_BODY} bytes\n")
    bodies = request.app[BODIES]
    body = bodies.get((kind, size))
    if body is None:
        body = json_body(size) if kind == "json" else os.urandom(size)
        if sum(map(len, bodies.values())) + size <= MAX_KEPT:
            bodies[(kind, size)] = body
    content_type = "application/json" if kind == "json" else "application/octet-stream"
    return web.Response(
        body=body,
        headers={"Cache-Control": CACHE_CONTROL, "Content-Type": content_type},
    )


async def _stream(request: web.Request) -> web.StreamResponse:
    size = parse_size(request.match_info["size"])
    if size is None or size > MAX_STREAM:
        return web.Response(status=404, text=f"sizes up to {MAX_STREAM} bytes\n")
    response = web.StreamResponse(
        headers={"Cache-Control": CACHE_CONTROL, "Content-Type": "application/octet-stream"}
    )
    response.content_length = size
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    block = request.app[BLOCK]
    sent = 0
    while sent < size:
        n = min(STREAM_CHUNK, size - sent)
        await response.write(block[:n])
        sent += n
    await response.write_eof()
    return response
