"""The purge API's HTTP surface: the REST API for CI, and the pull endpoint for nodes.

REST (design section 4, docs/purge-api.md):
    POST /v1/services/{service}/purge[?wait=SECONDS]   log a purge, fan it out
    GET  /v1/purges/{id}                                its status, per node
Node protocol (node secret):
    GET  /v1/nodes/{node}/purges?since=SEQ&limit=N      what a node missed
    POST /v1/nodes/{node}/matched                       counts that follow a node's acks
    GET  /healthz
Operations (docs/operations.md):
    GET  /metrics                                        node secret
    GET  /status, /status.json                           the fleet's status page

Checks run in this order, so each error names the first thing wrong: 401 token,
404 service, 403 scope, 429 rate, 400 wait or Idempotency-Key, 415 Content-Type,
413 size, 400 body, 422 an Idempotency-Key reused for a different purge. Error
messages quote at most a few dozen characters of what the client sent.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from fleet.config import Fleet, PurgeApiConfig, TokenConfig
from purge_api.body import BodyError, BodyTooLarge, parse_purge_body, shorten
from purge_api.fanout import FanOut
from purge_api.log import IdempotencyConflict, LoggedPurge
from purge_api.logs import LogUnavailable, open_log
from purge_api.metrics import render_purge_metrics
from purge_api.ratelimit import RateLimiter
from purge_api.status_page import status_routes
from purge_api.tokens import TokenStore
from purge_api.watch import FleetWatch
from runtime.auth import bearer_matches

__all__ = ["MAX_BODY_BYTES", "MAX_WAIT", "PurgeApi"]

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_WAIT = 300.0
MAX_PULL = 1000
#: counts one report of matched objects may carry
MAX_MATCHED = 1000
#: the largest sequence number SQLite's INTEGER holds
MAX_SEQ = 2**63 - 1
_PURGE_ID = re.compile(r"[0-9a-f]{32}")
#: an Idempotency-Key: printable ASCII (a structured-field string's characters)
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
#: body media types taken as JSON: JSON itself, and what `curl -d` and a bare text
#: body send (the documented curl examples omit Content-Type)
_JSON_TYPES = ("application/json", "text/plain", "application/x-www-form-urlencoded")


class PurgeApi:
    """The API's state (log, fan-out, tokens, rate limits) and its request handlers."""

    def __init__(
        self,
        fleet: Fleet,
        secret: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if fleet.purge_api is None:
            raise ValueError(f"{fleet.source}: no [purge_api] table")
        self.fleet = fleet
        self.config: PurgeApiConfig = fleet.purge_api
        self.clock = clock
        self.monotonic = monotonic
        self.tokens = TokenStore(self.config.tokens)
        self.limiter = RateLimiter(self.config.rate_limit_per_minute)
        self._secret = secret
        self.log = open_log(fleet)
        self.fanout = FanOut(fleet, self.log, secret, clock)
        self.watch = FleetWatch(fleet, secret, self.log, self.fanout, clock)

    def app(self) -> web.Application:
        """The aiohttp application; the log and the senders live as long as it runs."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes(
            [
                web.post("/v1/services/{service}/purge", self.post_purge),
                web.get("/v1/purges/{id}", self.get_purge),
                web.get("/v1/nodes/{node}/purges", self.pull),
                web.post("/v1/nodes/{node}/matched", self.post_matched),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
                *status_routes(self.watch),
            ]
        )
        app.cleanup_ctx.append(self._lifetime)
        return app

    async def _lifetime(self, _app: web.Application) -> AsyncIterator[None]:
        await self.fanout.start()
        await self.watch.start()
        yield
        await self.watch.stop()
        await self.fanout.stop()
        await self.log.close()

    # -- REST -----------------------------------------------------------------

    async def post_purge(self, request: web.Request) -> web.Response:
        """POST /v1/services/{service}/purge: log durably, answer 202, or 200 when complete."""
        token = self.tokens.authenticate(request.headers.get("Authorization"))
        if token is None:
            return _error(401, "missing or unknown token: send Authorization: Bearer TOKEN")
        name = request.match_info["service"]
        service = self.fleet.service(name)
        if service is None:
            return _error(404, f"no service named {shorten(name)}")
        if not self.tokens.allows(token, name):
            return _error(403, f"token {token.name!r} may not purge service {name!r}")
        retry_after = self.limiter.take(token.name, self.monotonic())
        if retry_after > 0:
            seconds = max(1, math.ceil(retry_after))
            return web.json_response(
                {
                    "error": f"too many purges for token {token.name!r}: at most "
                    f"{self.config.rate_limit_per_minute} a minute",
                    "retry_after": seconds,
                },
                status=429,
                headers={"Retry-After": str(seconds)},
            )
        wait = _wait_param(request)
        if isinstance(wait, web.Response):
            return wait
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            key = key.strip()
            if not _IDEMPOTENCY_KEY.fullmatch(key):
                return _error(
                    400,
                    "Idempotency-Key: must be 1 to 255 printable ASCII characters",
                    field="Idempotency-Key",
                )
        media_type = request.content_type
        if request.headers.get("Content-Type") and not (
            media_type in _JSON_TYPES or media_type.endswith("+json")
        ):
            return _error(
                415,
                f"Content-Type: the body is JSON (application/json), not {shorten(media_type)}",
                field="Content-Type",
            )
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _error(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
        try:
            purge_request = parse_purge_body(raw, service, self.config.max_items)
        except BodyTooLarge as exc:
            return _error(413, str(exc))
        except BodyError as exc:
            return _error(400, f"{exc.field}: {exc.message}", field=exc.field)
        try:
            purge, created = await self.log.append(
                name, purge_request, token.name, key, self.clock()
            )
        except LogUnavailable:
            return _unavailable()
        except IdempotencyConflict as exc:
            return _error(
                422,
                f"Idempotency-Key: {shorten(key or '')} was used for a different purge "
                f"({exc.earlier.id}); use a new key for a new purge",
                field="Idempotency-Key",
            )
        if created:
            self.fanout.appended(purge.seq)
        if wait > 0:
            await self.fanout.wait_complete(purge.seq, wait)
        try:
            status = await self._status(purge)
        except LogUnavailable:
            # logged, so the purge goes on: answer what the client needs to follow it
            status = {"id": purge.id, "seq": purge.seq, "status": "pending"}
        response = web.json_response(status, status=200 if status["status"] == "complete" else 202)
        response.headers["Location"] = f"/v1/purges/{purge.id}"
        if not created:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    async def get_purge(self, request: web.Request) -> web.Response:
        """GET /v1/purges/{id}: status and per-node acknowledgements."""
        token = self.tokens.authenticate(request.headers.get("Authorization"))
        if token is None:
            return _error(401, "missing or unknown token: send Authorization: Bearer TOKEN")
        purge_id = request.match_info["id"]
        try:
            purge = await self.log.get(purge_id) if _PURGE_ID.fullmatch(purge_id) else None
        except LogUnavailable:
            return _unavailable()
        if purge is None:
            return _error(404, f"no purge with id {shorten(purge_id)}")
        if not self.tokens.allows(token, purge.service):
            return _error(403, f"token {token.name!r} may not see purges of {purge.service!r}")
        wait = _wait_param(request)
        if isinstance(wait, web.Response):
            return wait
        if wait > 0:
            await self.fanout.wait_complete(purge.seq, wait)
        try:
            return web.json_response(await self._status(purge))
        except LogUnavailable:
            return _unavailable()

    async def _status(self, purge: LoggedPurge) -> dict[str, object]:
        acks = await self.log.acks(purge.seq)
        nodes: dict[str, float | None] = {}
        details: dict[str, dict[str, object]] = {}
        pending = []
        for node in self.fleet.nodes:
            ack = acks.get(node.name)
            if ack is None:
                nodes[node.name] = None
                pending.append(node.name)
                continue
            ms = round(max(0.0, ack.acked_at - purge.accepted_at) * 1000, 3)
            nodes[node.name] = ms
            details[node.name] = {"acked_at": ack.acked_at, "ack_ms": ms, "matched": ack.matched}
        complete = not pending
        times = [ms for ms in nodes.values() if ms is not None]
        return {
            "id": purge.id,
            "seq": purge.seq,
            "status": "complete" if complete else "pending",
            "service": purge.service,
            "accepted_at": purge.accepted_at,
            "request": purge.request.to_json(),
            "acked": len(details),
            "total": len(nodes),
            "nodes": nodes,
            "acks": details,
            "pending": pending,
            "propagation_ms": max(times, default=0.0) if complete else None,
        }

    # -- node protocol --------------------------------------------------------

    async def pull(self, request: web.Request) -> web.Response:
        """GET /v1/nodes/{node}/purges?since=N&limit=M: purges after N the node may have."""
        if not bearer_matches(request.headers.get("Authorization"), self._secret):
            return _error(401, "missing or wrong node secret")
        node = request.match_info["node"]
        if node not in self.fanout.links:
            return _error(404, f"no node named {shorten(node)} in the fleet")
        try:
            since = int(request.query.get("since", "0"))
            limit = min(MAX_PULL, int(request.query.get("limit", str(MAX_PULL))))
        except ValueError:
            return _error(400, "since and limit must be integers", field="since")
        if not 0 <= since <= MAX_SEQ or limit < 1:
            return _error(400, "since must be 0 to 2**63-1 and limit >= 1", field="since")
        up_to = self.fanout.limit_for(node)
        try:
            purges = await self.log.since(since, limit, up_to)
        except LogUnavailable:
            return _unavailable()
        self.fanout.node_pulled(node)
        last = purges[-1].seq if purges else since
        return web.json_response(
            {
                "records": [p.to_wire() for p in purges],
                "head": self.fanout.head,
                "up_to": up_to,
                "more": last < up_to,
            }
        )

    async def post_matched(self, request: web.Request) -> web.Response:
        """POST /v1/nodes/{node}/matched {"matched": {"SEQ": COUNT}}: how many stored
        objects purges covered on the node, counted after it acknowledged them."""
        if not bearer_matches(request.headers.get("Authorization"), self._secret):
            return _error(401, "missing or wrong node secret")
        node = request.match_info["node"]
        if node not in self.fanout.links:
            return _error(404, f"no node named {shorten(node)} in the fleet")
        try:
            body = await request.json()
            matched = body["matched"]
            if not isinstance(matched, dict) or len(matched) > MAX_MATCHED:
                raise ValueError
            counts = [(int(seq), count) for seq, count in matched.items()]
        except (ValueError, KeyError, TypeError, RecursionError):
            return _error(
                400, f'expected {{"matched": {{"SEQ": COUNT}}}} with at most {MAX_MATCHED}'
            )
        if not all(
            0 < seq <= MAX_SEQ
            and isinstance(n, int)
            and not isinstance(n, bool)
            and 0 <= n <= MAX_SEQ
            for seq, n in counts
        ):
            return _error(400, "sequence numbers and counts must be non-negative integers")
        try:
            await self.log.record_matched(node, counts)
        except LogUnavailable:
            return _unavailable()
        return web.json_response({"node": node, "recorded": len(counts)})

    async def healthz(self, _request: web.Request) -> web.Response:
        """GET /healthz: the API is up; the log's head and the edges' released seq."""
        return web.json_response(
            {"status": "ok", "head": self.fanout.head, "released": self.fanout.released()}
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics (node secret): purges by state, lag and acks per node, log size."""
        if not bearer_matches(request.headers.get("Authorization"), self._secret):
            return _error(401, "missing or wrong node secret")
        text = await render_purge_metrics(self.log, self.fanout, self.clock())
        return web.Response(body=text, content_type="text/plain")


def _wait_param(request: web.Request) -> float | web.Response:
    text = request.query.get("wait", "0")
    try:
        wait = float(text)
    except ValueError:
        return _error(400, f"wait: {shorten(text)} is not a number of seconds", field="wait")
    if not 0 <= wait <= MAX_WAIT or math.isnan(wait):
        return _error(400, f"wait: must be between 0 and {MAX_WAIT:g} seconds", field="wait")
    return wait


def _unavailable() -> web.Response:
    response = _error(503, "the purge log is unavailable; try again")
    response.headers["Retry-After"] = "1"
    return response


def _error(status: int, message: str, *, field: str | None = None) -> web.Response:
    body: dict[str, object] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def token_names(tokens: tuple[TokenConfig, ...]) -> list[str]:
    """The configured token names (for the start-up line)."""
    return [token.name for token in tokens]
