"""The demo origin: a small website that sends every kind of cache header.

The demo fleet needs something behind the CDN that shows what the CDN does: HTML
pages that compress well, images that do not, a JSON API, objects tagged with
`Surrogate-Key`, and responses for each freshness and validation rule a cache must
honour. Page bodies carry a version number that `POST /admin/bump` (or a timer)
raises, so a purge visibly brings new content. `GET /admin/stats` counts the
requests that reached the origin, which is what a cache is meant to reduce.

The same server is the origin of tests and benchmarks: tests script what a path
answers (`demo.scripted`, set through `OriginState.routes`) and read the counts and the
request headers the origin saw; benchmarks fetch objects of a given size
(`demo.sized`). One origin, so what the demo shows is what the tests exercise.

Run it with `python -m demo.origin --listen 127.0.0.1:8080`.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hashlib
import html
import json
import logging
import random
import re
import struct
import sys
import time
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from demo.scripted import Route, answer
from demo.sized import add_sized_routes
from fleet.config import split_host_port

__all__ = ["STATE", "OriginState", "main", "make_app"]

LARGE_SIZE_DEFAULT = 8 * 1024 * 1024
LANGUAGES = {
    "en": "Hello, and welcome to the edgeshield demo.",
    "de": "Hallo und willkommen zur edgeshield-Demo.",
    "fr": "Bonjour et bienvenue dans la démo edgeshield.",
    "ja": "edgeshield デモへようこそ。",
}

# (path, what it shows) for the index page; the routes below serve each of them.
PATHS: tuple[tuple[str, str], ...] = (
    (
        "/pages/home",
        "HTML page (compressible), max-age=60, stale-while-revalidate=30, "
        "stale-if-error=600, Surrogate-Key: pages page-home, ETag and Last-Modified",
    ),
    ("/pages/news", "another page; any /pages/NAME works"),
    ("/images/logo.png", "PNG image (not compressible), max-age=86400, Surrogate-Key: images"),
    (
        "/api/items",
        "JSON list, max-age=5 for browsers, s-maxage=30 for the CDN, Surrogate-Key: api items",
    ),
    ("/api/items/3", "JSON item, s-maxage=60, Surrogate-Key: api item-3"),
    ("/greeting", "Vary: Accept-Language (en, de, fr, ja)"),
    ("/large.bin", "large binary object; Accept-Ranges: bytes, 206 for a Range"),
    ("/headers/no-store", "Cache-Control: no-store (never cached)"),
    ("/headers/private", "Cache-Control: private, max-age=60 (not in a shared cache)"),
    ("/headers/no-cache", "Cache-Control: no-cache with an ETag (revalidated each time)"),
    ("/headers/swr", "max-age=2, stale-while-revalidate=60"),
    ("/headers/sie", "max-age=2, stale-if-error=3600 (see POST /admin/fail)"),
    ("/headers/expires", "Expires 120 s ahead, no Cache-Control"),
    ("/headers/heuristic", "only Last-Modified: heuristic freshness"),
    ("/headers/cdn-cache-control", "Cache-Control: max-age=10, CDN-Cache-Control: max-age=300"),
    ("/headers/surrogate-control", "Cache-Control: max-age=10, Surrogate-Control: max-age=300"),
    ("/status/404", "any status code, no cache headers (negative caching)"),
    ("/echo", "the request as the origin saw it (X-Forwarded-For, Via, CDN-Loop), no-store"),
    ("/healthz", "health check"),
    ("/json/100k, /bin/1m, /stream/1g", "objects of a given size, max-age=3600 (benchmarks)"),
    ("POST /admin/bump", "raise the content version (pages and API change)"),
    ("POST /admin/fail?on=1", "make every content path answer 503 (on=0 to recover)"),
    ("/admin/stats", "the version and how many requests reached the origin, per path"),
)

_ETAG_LIST_ITEM = re.compile(r'\s*(W/)?("[^"]*"|\*)\s*(?:,|$)')


@dataclass
class OriginState:
    """What changes while the origin runs: the content version, failure mode, counts,
    and the routes a test scripted."""

    version: int = 1
    changed_at: int = field(default_factory=lambda: int(time.time()))
    failing: bool = False
    #: content requests by path and query as sent (health checks and /admin/ left out)
    requests: Counter[str] = field(default_factory=Counter)
    #: the header fields of the latest content requests, oldest first
    seen_headers: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=256))
    #: path (with or without its query) -> what it answers, before any built-in route
    routes: dict[str, Route] = field(default_factory=dict)

    def bump(self) -> int:
        """A new content version; pages and API objects change with it."""
        self.version += 1
        # Last-Modified has one-second resolution (RFC 9110 section 8.8.2), so keep the
        # new time strictly later than the old one for If-Modified-Since to notice.
        self.changed_at = max(int(time.time()), self.changed_at + 1)
        return self.version


STATE = web.AppKey("state", OriginState)
LARGE = web.AppKey("large", bytes)
IMAGES = web.AppKey("images", dict[str, bytes])


def make_app(*, bump_every: float = 0.0, large_size: int = LARGE_SIZE_DEFAULT) -> web.Application:
    """The demo origin's aiohttp application.

    `bump_every` > 0 raises the content version every that many seconds;
    `large_size` is the size of `/large.bin` in bytes.
    """
    app = web.Application(middlewares=[_count_and_fail])
    app[STATE] = OriginState()
    app[LARGE] = random.Random(7).randbytes(large_size)
    app[IMAGES] = {}
    app.router.add_get("/", _index)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/pages/{name}", _page)
    app.router.add_get("/images/{name}.png", _image)
    app.router.add_get("/api/items", _items)
    app.router.add_get("/api/items/{item_id}", _item)
    app.router.add_get("/greeting", _greeting)
    app.router.add_get("/large.bin", _large)
    app.router.add_get("/headers/{kind}", _headers_demo)
    app.router.add_get("/status/{code}", _status)
    app.router.add_route("*", "/echo", _echo)
    app.router.add_post("/admin/bump", _bump)
    app.router.add_post("/admin/fail", _fail)
    app.router.add_get("/admin/stats", _stats)
    add_sized_routes(app)
    if bump_every > 0:
        app.cleanup_ctx.append(_bump_timer(bump_every))
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _count_and_fail(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count content requests, answer 503 to them while failure mode is on, and answer
    a scripted route where a test set one."""
    state = request.app[STATE]
    if request.path.startswith("/admin/"):
        return await handler(request)
    if request.path != "/healthz":
        state.requests[request.path_qs] += 1
        state.seen_headers.append(dict(request.headers))
    if state.failing:
        return web.Response(
            status=503,
            text="demo origin: failing on purpose\n",
            headers={"Cache-Control": "no-store"},
        )
    route = state.routes.get(request.path_qs) or state.routes.get(request.path)
    if route is not None:
        return await answer(request, route)
    return await handler(request)


def _bump_timer(every: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async def tick() -> None:
            while True:
                await asyncio.sleep(every)
                app[STATE].bump()

        task = asyncio.create_task(tick())
        yield
        task.cancel()

    return context


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 section 13.1.2)."""
    opaque = etag.removeprefix("W/")
    for match in _ETAG_LIST_ITEM.finditer(header):
        candidate = match.group(2)
        if candidate == "*" or candidate == opaque:
            return True
    return False


def _not_modified(request: web.Request, etag: str | None, last_modified: int | None) -> bool:
    """Whether a GET/HEAD may be answered 304 (RFC 9110 section 13.2.2 order)."""
    if request.method not in ("GET", "HEAD"):
        return False
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        # A recipient MUST ignore If-Modified-Since if the request contains an
        # If-None-Match header field (RFC 9110 section 13.1.3).
        return etag is not None and _etag_matches(if_none_match, etag)
    since = request.if_modified_since
    if since is not None and last_modified is not None:
        return last_modified <= since.timestamp()
    return False


def _respond(
    request: web.Request,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str],
    *,
    etag: str | None = None,
    last_modified: int | None = None,
    ranges: bool = False,
) -> web.Response:
    """A 200, 304 or 206 for `body`, with validators and conditional handling."""
    out = dict(headers)
    if etag is not None:
        out["ETag"] = etag
    if last_modified is not None:
        out["Last-Modified"] = _http_date(last_modified)
    if ranges:
        out["Accept-Ranges"] = "bytes"
    if _not_modified(request, etag, last_modified):
        # A 304 carries the headers a 200 would have had (RFC 9110 section 15.4.5).
        return web.Response(status=304, headers=out)
    if ranges and "Range" in request.headers and _if_range_holds(request, etag):
        return _partial(request.headers["Range"], body, content_type, out)
    return web.Response(
        body=body,
        content_type=content_type.split(";")[0],
        charset=_charset(content_type),
        headers=out,
    )


def _charset(content_type: str) -> str | None:
    _, _, params = content_type.partition(";")
    key, _, value = params.strip().partition("=")
    return value if key == "charset" else None


def _if_range_holds(request: web.Request, etag: str | None) -> bool:
    """If-Range with a strong ETag match lets the Range apply (RFC 9110 section 13.1.5)."""
    if_range = request.headers.get("If-Range")
    if if_range is None:
        return True
    return etag is not None and not etag.startswith("W/") and if_range.strip() == etag


def _partial(
    range_header: str, body: bytes, content_type: str, headers: dict[str, str]
) -> web.Response:
    """206 for one satisfiable byte range, 416 for none; several ranges get the whole body.

    A server MAY ignore the Range header field (RFC 9110 section 14.2), which is what
    this origin does for multiple ranges and for anything it does not parse.
    """
    size = len(body)
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", range_header)
    if match is None or (not match.group(1) and not match.group(2)):
        return web.Response(body=body, content_type=content_type, headers=headers)
    first_text, last_text = match.groups()
    if first_text:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    else:
        suffix = int(last_text)
        first, last = max(size - suffix, 0), size - 1
        if suffix == 0:
            first = size
    if first >= size or first > last:
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers)
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return web.Response(
        status=206, body=body[first : last + 1], content_type=content_type, headers=headers
    )


def _page_html(title: str, paragraphs: Sequence[str]) -> bytes:
    items = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{items}\n</body></html>\n"
    ).encode()


async def _index(request: web.Request) -> web.Response:
    rows = "\n".join(
        f"<tr><td><code>{html.escape(path)}</code></td><td>{html.escape(what)}</td></tr>"
        for path, what in PATHS
    )
    body = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>edgeshield demo origin</title></head>\n<body>\n"
        "<h1>edgeshield demo origin</h1>\n"
        f"<p>Content version {request.app[STATE].version}.</p>\n"
        f"<table>\n<tr><th>path</th><th>what it shows</th></tr>\n{rows}\n</table>\n"
        "</body></html>\n"
    ).encode()
    return _respond(
        request,
        body,
        "text/html; charset=utf-8",
        {"Cache-Control": "public, max-age=60", "Surrogate-Key": "index"},
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


async def _page(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not re.fullmatch(r"[a-z0-9-]{1,64}", name):
        return web.Response(status=404, text="no such page\n")
    state = request.app[STATE]
    filler = (
        f"This is the {name} page of the edgeshield demo. It is HTML, so the edges "
        "store a Brotli and a gzip variant of it beside the original and hand each "
        "client the encoding it asked for."
    )
    body = _page_html(
        f"{name} (version {state.version})",
        [f"Content version {state.version}.", *[filler] * 40],
    )
    headers = {
        "Cache-Control": "public, max-age=60, stale-while-revalidate=30, stale-if-error=600",
        "Surrogate-Key": f"pages page-{name}",
    }
    return _respond(
        request,
        body,
        "text/html; charset=utf-8",
        headers,
        etag=f'"page-{name}-v{state.version}"',
        last_modified=state.changed_at,
    )


def _png(width: int, height: int, seed: str) -> bytes:
    """A PNG of random pixels: real image bytes that do not compress."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


async def _image(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not re.fullmatch(r"[a-z0-9-]{1,64}", name):
        return web.Response(status=404, text="no such image\n")
    images = request.app[IMAGES]
    if name not in images:
        images[name] = _png(128, 128, name)
    body = images[name]
    etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
    headers = {"Cache-Control": "public, max-age=86400", "Surrogate-Key": f"images image-{name}"}
    return _respond(
        request,
        body,
        "image/png",
        headers,
        etag=etag,
        last_modified=request.app[STATE].changed_at - 86400,
    )


def _json(data: object) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


async def _items(request: web.Request) -> web.Response:
    state = request.app[STATE]
    items = [{"id": i, "name": f"item {i}", "version": state.version} for i in range(1, 11)]
    body = _json({"version": state.version, "items": items})
    headers = {"Cache-Control": "public, max-age=5, s-maxage=30", "Surrogate-Key": "api items"}
    return _respond(
        request,
        body,
        "application/json",
        headers,
        etag=f'"items-v{state.version}"',
        last_modified=state.changed_at,
    )


async def _item(request: web.Request) -> web.Response:
    item_id = request.match_info["item_id"]
    if not item_id.isdigit() or not 1 <= int(item_id) <= 10:
        return web.json_response({"error": "no such item"}, status=404)
    state = request.app[STATE]
    body = _json({"id": int(item_id), "name": f"item {item_id}", "version": state.version})
    headers = {
        "Cache-Control": "public, max-age=10, s-maxage=60",
        "Surrogate-Key": f"api item-{item_id}",
    }
    return _respond(
        request,
        body,
        "application/json",
        headers,
        etag=f'"item-{item_id}-v{state.version}"',
        last_modified=state.changed_at,
    )


def _language(accept_language: str) -> str:
    """The best of our languages by the q-values of Accept-Language (RFC 9110 12.5.4)."""
    best, best_q = "en", 0.0
    for part in accept_language.split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best


async def _greeting(request: web.Request) -> web.Response:
    language = _language(request.headers.get("Accept-Language", ""))
    state = request.app[STATE]
    body = f"{LANGUAGES[language]} (version {state.version})\n".encode()
    headers = {
        "Cache-Control": "public, max-age=300",
        "Vary": "Accept-Language",
        "Content-Language": language,
        "Surrogate-Key": "greeting",
    }
    return _respond(
        request,
        body,
        "text/plain; charset=utf-8",
        headers,
        etag=f'"greeting-{language}-v{state.version}"',
        last_modified=state.changed_at,
    )


async def _large(request: web.Request) -> web.Response:
    body = request.app[LARGE]
    headers = {"Cache-Control": "public, max-age=3600", "Surrogate-Key": "large"}
    return _respond(
        request,
        body,
        "application/octet-stream",
        headers,
        etag=f'"large-{len(body)}"',
        last_modified=request.app[STATE].changed_at,
        ranges=True,
    )


# kind -> (headers, whether to send an ETag, whether to send Last-Modified)
_HEADER_DEMOS: dict[str, tuple[dict[str, str], bool, bool]] = {
    "no-store": ({"Cache-Control": "no-store"}, False, False),
    "private": ({"Cache-Control": "private, max-age=60"}, True, False),
    "no-cache": ({"Cache-Control": "no-cache"}, True, True),
    "swr": ({"Cache-Control": "public, max-age=2, stale-while-revalidate=60"}, True, True),
    "sie": ({"Cache-Control": "public, max-age=2, stale-if-error=3600"}, True, True),
    "expires": ({}, True, False),
    "heuristic": ({}, False, True),
    "cdn-cache-control": (
        {"Cache-Control": "public, max-age=10", "CDN-Cache-Control": "max-age=300"},
        True,
        True,
    ),
    "surrogate-control": (
        {"Cache-Control": "public, max-age=10", "Surrogate-Control": "max-age=300"},
        True,
        True,
    ),
}


async def _headers_demo(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind not in _HEADER_DEMOS:
        return web.Response(status=404, text="no such header demo\n")
    template, with_etag, with_last_modified = _HEADER_DEMOS[kind]
    state = request.app[STATE]
    headers = {**template, "Surrogate-Key": f"headers headers-{kind}"}
    if kind == "expires":
        headers["Expires"] = _http_date(time.time() + 120)
    body = (f"{kind}: version {state.version}, generated at {_http_date(time.time())}\n").encode()
    return _respond(
        request,
        body,
        "text/plain; charset=utf-8",
        headers,
        etag=f'"{kind}-v{state.version}"' if with_etag else None,
        last_modified=state.changed_at - 3600 if with_last_modified else None,
    )


async def _status(request: web.Request) -> web.Response:
    code = request.match_info["code"]
    if not code.isdigit() or not 200 <= int(code) <= 599 or int(code) in (204, 304):
        return web.Response(status=400, text="use /status/NNN with NNN in 200-599\n")
    return web.Response(status=int(code), text=f"status {code} on purpose\n")


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    data = {
        "method": request.method,
        "path": request.path_qs,
        "remote": request.remote,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_length": len(body),
        "version": request.app[STATE].version,
    }
    return web.Response(
        body=_json(data), content_type="application/json", headers={"Cache-Control": "no-store"}
    )


async def _bump(request: web.Request) -> web.Response:
    return web.json_response({"version": request.app[STATE].bump()})


async def _fail(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.failing = request.query.get("on", "1") not in ("0", "false", "off")
    return web.json_response({"failing": state.failing})


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "version": state.version,
            "failing": state.failing,
            "requests": dict(sorted(state.requests.items())),
        },
        headers={"Cache-Control": "no-store"},
    )


class _AccessLogger(AbstractAccessLogger):
    """One short line per request, leaving out health checks that would drown the rest."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path == "/healthz":
            return
        self.logger.info(
            "%s %s %s %d %.1fms",
            request.remote,
            request.method,
            request.path_qs,
            response.status,
            time * 1000,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo origin until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m demo.origin", description="The edgeshield demo origin."
    )
    parser.add_argument("--listen", required=True, help="host:port to serve on")
    parser.add_argument(
        "--bump-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="raise the content version this often (default: only on POST /admin/bump)",
    )
    parser.add_argument(
        "--large-size",
        type=int,
        default=LARGE_SIZE_DEFAULT,
        metavar="BYTES",
        help="size of /large.bin",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no line per request (benchmarks, where logging would cost more than serving)",
    )
    args = parser.parse_args(argv)
    try:
        host, port = split_host_port(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    app = make_app(bump_every=args.bump_every, large_size=args.large_size)
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None if args.quiet else logging.getLogger("aiohttp.access"),
        access_log_class=_AccessLogger,
        print=lambda text: print(f"demo origin: listening on http://{args.listen}", flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
