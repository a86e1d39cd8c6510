"""The one driver: carries out the cache policy's decisions against the store and upstream.

Edge and shield both run this engine; they differ by `EngineOptions` (the edge makes
compressed variants and hides CDN-only fields from clients; the shield stores what the
origin sent and passes those fields on to the edges) and by their `Upstream`.

The request path, top to bottom (`handle`):
  route    → the service for the Host (421 for any other host), loop check (508)
  classify → pass / invalidate (unsafe methods) / cacheable
  lookup   → memory tier (no await) or disk index; Vary index → the variant
  decide   → policy.decide: serve, serve stale + revalidate, revalidate, fetch
  respond  → from the store (conditionals, Range, encoding), or from a collapsed fill
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar, assert_never
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from edge.cache import policy, transitions
from edge.cache.conditional import evaluate_preconditions, if_range_allows
from edge.cache.encoding import choose_encoding, is_compressible
from edge.cache.keys import (
    normalize_target,
    origin_form,
    primary_key,
    secondary_key,
)
from edge.cache.model import ObjectMeta, VaryIndex
from edge.cache.policy import Action, Decision, RequestKind
from edge.cache.purge import MAX_RULE_AGE, PurgeRules, PurgeVerdict
from edge.cache.ranges import (
    ByteRange,
    Unsatisfiable,
    content_range,
    parse_range,
    unsatisfied_range,
)
from edge.cache.transitions import (
    Error,
    NotModified,
    ServeStale,
    ServeWithoutStoring,
    StoreAndServe,
    UpstreamFailed,
)
from edge.compress import DecodeError, DecodeLimit, StreamDecoder, make_variants
from edge.fill import Fill, FillFailed, FillHead, FillTable, HeadKind
from edge.forwarding import (
    IPNetwork,
    end_to_end_fields,
    is_trusted_peer,
    loop_tokens,
    request_host,
    upstream_request_headers,
)
from edge.metrics import NodeMetrics
from edge.outcome import ErrorSource, Outcome, refused
from edge.store import (
    BodyCorrupt,
    BodyGone,
    BodyRef,
    BodyWriter,
    ObjectStore,
    StoredEntry,
    StoreError,
    open_body,
    read_body,
)
from edge.upstream import GENERATED_ERROR_HEADER, UNREACHABLE, UpstreamError, UpstreamResponse
from fleet.config import Service, object_limit

log = logging.getLogger("edgeshield.engine")

_R = TypeVar("_R", bound=web.StreamResponse)

STALE_MARK = "X-Edgeshield-Stale"
ERROR_BODY_LIMIT = 64 * 1024
#: Chunk size when a body is read from disk: few executor trips per object. (uvloop's
#: event loop has no sendfile, so bodies not in the memory tier are copied.)
COPY_CHUNK = 1024 * 1024
#: How often a fill takes the rest of a body from another upstream after a cut.
MID_BODY_RETRIES = 2
#: How long a not-storable answer waits for the request that caused it to take it.
PASS_HANDOFF_SECONDS = 10.0
#: The Cache-Status detail of an answer passed on unstored because its body's end
#: cannot be told from a cut connection; a tier below that sees it does not store either
CLOSE_DELIMITED_DETAIL = "detail=close-delimited"
#: How often one request looks the store up again after it changed underneath (a
#: body gone before its answer started, a fill that stored another variant).
MAX_RESTARTS = 3
#: A cut this close to the size limit is the tier above stopping there.
LIMIT_CUT_SLACK = 1024 * 1024


class ObjectTooLarge(Exception):
    """A fill's body passed the object size limit: it is aborted, never committed."""


class Upstream(Protocol):
    """The next tier, as the engine sees it."""

    async def fetch(
        self,
        service: Service,
        key: str,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | aiohttp.StreamReader | None,
    ) -> UpstreamResponse:
        """Send a request on; raises UpstreamError when no answer can be had."""
        ...

    def failed(self, response: UpstreamResponse) -> None:
        """The peer behind `response` broke off: avoid it for a while."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """What distinguishes an edge from a shield."""

    node_name: str
    #: make br/gzip variants at fill time (edges); shields store what the origin sent
    compress: bool = True
    #: the downstream is one of our edges: pass CDN-only fields and surrogate keys on
    downstream_is_cdn: bool = False
    #: the value this node adds to CDN-Loop (RFC 8586) and looks for to detect loops
    cdn_loop_token: str = ""
    #: tell the downstream cache that an answer was served stale (shields)
    mark_stale: bool = False
    #: peers whose forwarding fields are kept ([security] trusted_proxies)
    trusted_proxies: tuple[IPNetwork, ...] = ()
    #: the node token by which our own nodes prove themselves (see edge.forwarding)
    node_token: str = ""
    #: store answers to requests with Cookie/Authorization on a heuristic lifetime
    heuristic_with_credentials: bool = False


#: Entries in each fast-lane table before it is emptied and refilled.
HOT_PATH_ENTRIES = 50_000


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a (Host, target) pair leads: its primary cache key."""

    key: str


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A hot hit's answer, less Age and Cache-Status (set per response)."""

    entry: StoredEntry
    headers: CIMultiDict[str]
    body: bytes
    size: int
    status_prefix: str


class _Restart:
    """The answer of a lookup that must start over (see MAX_RESTARTS)."""


RESTART = _Restart()


class _EntryGone(Exception):
    """A stored entry's body vanished before its response started."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass(frozen=True)
class FillJob:
    """What a fill fetches: the object, and the request it is fetched for."""

    service: Service
    host: str
    target: str
    key: str
    #: the request as the next tier sees it (validators added when revalidating)
    upstream_headers: CIMultiDict[str]
    #: the stored object being revalidated, if any
    stale: StoredEntry | None
    #: the client request's own fields (for Vary and storability)
    request_headers: CIMultiDict[str]


class Engine:
    """Serves one node's traffic: the cache's request path as one readable driver."""

    def __init__(
        self,
        services: tuple[Service, ...],
        options: EngineOptions,
        store: ObjectStore,
        upstream: Upstream,
        rules: PurgeRules,
        metrics: NodeMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.store = store
        self.upstream = upstream
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self.fills = FillTable()
        self._hosts = {host: service for service in services for host in service.hosts}
        #: per service: the largest body stored, or decoded for a client
        self._limits = {s.name: object_limit(s, store.max_bytes) for s in services}
        store.on_corrupt = self._corrupt_found
        self._loop_token = options.cdn_loop_token or f"edgeshield-{options.node_name}"
        self._via = f"1.1 {options.node_name} (edgeshield)"
        self._background: set[asyncio.Task[None]] = set()
        #: fast-lane memory: (Host, raw target) → cache key; (key, Accept-Encoding) →
        #: the prepared answer. Both bounded; entries are checked against the store.
        self._routes: dict[tuple[str | None, str], _Route] = {}
        self._prepared: dict[tuple[str, str | None], _Prepared] = {}

    # -- the request path ---------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one client request."""
        if request.method == "GET" and not request.body_exists:
            hot = self._hot_hit(request)
            if hot is not None:
                return hot
        host = request_host(request)
        service = self._hosts.get(host)
        if service is None:
            self.metrics.refused.inc()
            return _error(
                421,
                f"this CDN does not serve the host {host[:64]!r}",
                refused("host-not-served"),
                self.options.node_name,
            )
        if self._loop_token in loop_tokens(request.headers):
            return _error(
                508, "request loop detected (CDN-Loop)", refused("loop"), self.options.node_name
            )
        if not origin_form(request.raw_path).startswith("/"):
            return _refuse(400, "the request target must be a path or an absolute URL", "target")
        if request.method in _NO_BODY_METHODS and request.body_exists:
            # A cached answer is shared by everyone who asks for the key, and fills never
            # send a body, so a body could only change the answer without changing the
            # key (RFC 9110 9.3.1: "content received in a GET request has no generally
            # defined semantics" and may be rejected). Bodies on OPTIONS and DELETE,
            # which always pass, are forwarded with framing of our own.
            return _refuse(400, f"a {request.method} request must not have a body", "body")
        kind = policy.classify_request(request.method, request.headers)
        if kind is not RequestKind.CACHEABLE:
            return await self._pass(
                request, service, host, invalidate=kind is RequestKind.INVALIDATING
            )
        for _ in range(MAX_RESTARTS):
            try:
                answer = await self._cacheable(request, service, host)
            except _EntryGone as gone:
                # the memory tier pointed at a body file that is gone: look again
                self.store.forget_cached(gone.key)
                continue
            if not isinstance(answer, _Restart):
                return answer
        # the store kept changing under this request (variants replaced, bodies
        # evicted): answer it straight from upstream rather than loop
        return await self._pass(request, service, host, detail="restarts")

    def _hot_hit(self, request: web.BaseRequest) -> web.Response | None:
        """The fast lane: a plain GET for a fresh object whose body is in memory.

        Everything here was computed before (the route, the headers of the chosen
        coding); anything unusual (preconditions, Range, loops, Vary, purges that
        cover the object, staleness) returns None and takes the full path.
        """
        headers = request.headers
        route = self._routes.get((headers.get("Host"), request.raw_path))
        if route is None:
            return None
        entry = self.store.peek(route.key)
        if entry is None:
            return None
        meta = entry.meta
        if type(meta) is not ObjectMeta or meta.no_cache:
            return None
        if not transitions.may_use_hot_lane(headers):
            return None
        now = self.clock()
        age, ttl = transitions.freshness(meta, now)
        if ttl <= 0:
            return None
        if self.rules.version and self._verdict(meta, now) is not PurgeVerdict.NONE:
            return None
        prepared = self._prepared.get((route.key, headers.get("Accept-Encoding")))
        if prepared is None or prepared.entry is not entry:
            prepared = self._prepare(route.key, entry, meta, headers.get("Accept-Encoding"))
            if prepared is None:
                return None
        response_headers = prepared.headers.copy()
        response_headers["Age"] = str(int(age))
        outcome = Outcome(hit=True, ttl=int(ttl))
        response_headers["Cache-Status"] = prepared.status_prefix + outcome.member()
        self.metrics.hits.inc()
        self.metrics.bytes_sent.inc(prepared.size)
        response = web.Response(status=meta.status, headers=response_headers, body=prepared.body)
        response[OUTCOME] = outcome
        return response

    def _prepare(
        self, key: str, entry: StoredEntry, meta: ObjectMeta, accept_encoding: str | None
    ) -> _Prepared | None:
        """Headers and body of a hot hit, computed once per entry and Accept-Encoding."""
        encoding = choose_encoding(accept_encoding, entry.bodies.keys())
        if encoding is None:
            return None
        body = entry.bodies.get(encoding)
        if body is None or body.data is None:
            return None
        headers = self._response_headers(meta, 0, Outcome(), False)
        del headers["Age"]
        del headers["Cache-Status"]
        if encoding != "identity":
            headers["Content-Encoding"] = encoding
        if meta.status == 200:
            headers["Accept-Ranges"] = "bytes"
        own = f"{self.options.node_name}; "
        prefix = f"{meta.upstream_cache_status}, {own}" if meta.upstream_cache_status else own
        prepared = _Prepared(entry, headers, body.data, body.size, prefix)
        if len(self._prepared) >= HOT_PATH_ENTRIES:
            self._prepared.clear()
        self._prepared[(key, accept_encoding)] = prepared
        return prepared

    async def _cacheable(
        self, request: web.BaseRequest, service: Service, host: str
    ) -> web.StreamResponse | _Restart:
        target = normalize_target(
            origin_form(request.raw_path),
            service.cache_key.sort_query,
            service.cache_key.drop_params,
        )
        key = primary_key(service.name, host, target)
        if len(self._routes) >= HOT_PATH_ENTRIES:
            self._routes.clear()
        self._routes[(request.headers.get("Host"), request.raw_path)] = _Route(key)
        entry = self.store.peek(key) or await self.store.get(key)
        fwd_missing = "uri-miss"
        if entry is not None and isinstance(entry.meta, VaryIndex):
            key = _variant_key(key, entry.meta.fields, end_to_end_fields(request.headers))
            entry = self.store.peek(key) or await self.store.get(key)
            fwd_missing = "vary-miss"
        meta = entry.meta if entry is not None and isinstance(entry.meta, ObjectMeta) else None
        now = self.clock()
        verdict = self._verdict(meta, now) if meta is not None else PurgeVerdict.NONE
        decision = policy.decide(meta, now, verdict, self._purged_at(meta, verdict))
        match decision.action:
            case Action.SERVE:
                assert entry is not None and meta is not None
                return await self._from_store(
                    request, entry, meta, decision, Outcome(hit=True, ttl=int(decision.ttl))
                )
            case Action.SERVE_STALE_REVALIDATE:
                assert entry is not None and meta is not None
                self._revalidate_in_background(request, service, host, target, key, entry)
                return await self._from_store(
                    request,
                    entry,
                    meta,
                    decision,
                    Outcome(hit=True, ttl=int(decision.ttl), detail="stale-while-revalidate"),
                    stale=True,
                )
            case Action.REVALIDATE:
                pass
            case Action.FETCH:
                entry = None
            case _:
                assert_never(decision.action)
        if transitions.only_if_cached(request.headers):
            return _error(
                504,
                "not in cache (only-if-cached)",
                refused("only-if-cached"),
                self.options.node_name,
            )
        fwd = fwd_missing if meta is None else (decision.fwd or "miss")
        return await self._through_fill(
            request, service, host, target, key, entry, decision, fwd, verdict
        )

    def _verdict(self, meta: ObjectMeta, now: float) -> PurgeVerdict:
        if self.rules.version == 0:
            return PurgeVerdict.NONE
        if meta.stored_at < now - MAX_RULE_AGE:
            # rules this old are dropped, so an object this old is validated instead
            return PurgeVerdict.STALE
        return self.rules.verdict(
            meta.service, meta.host, meta.target, meta.surrogate_keys, meta.stored_at
        )

    def _purged_at(self, meta: ObjectMeta | None, verdict: PurgeVerdict) -> float | None:
        """When the soft purge behind a STALE verdict was applied (None otherwise)."""
        if meta is None or verdict is not PurgeVerdict.STALE:
            return None
        return self.rules.soft_purged_at(
            meta.service, meta.host, meta.target, meta.surrogate_keys, meta.stored_at
        )

    # -- fills --------------------------------------------------------------------------
    async def _through_fill(
        self,
        request: web.BaseRequest,
        service: Service,
        host: str,
        target: str,
        key: str,
        stale: StoredEntry | None,
        decision: Decision,
        fwd: str,
        verdict: PurgeVerdict,
    ) -> web.StreamResponse | _Restart:
        self.metrics.misses.inc()
        fill = self._joinable_fill(key, service, host, target)
        collapsed = fill is not None
        if fill is None:
            fill = self._start_fill(request, service, host, target, key, stale)
        fill.waiters += 1
        head = await fill.head()
        outcome = Outcome(fwd=fwd, collapsed=collapsed)
        match head.kind:
            case HeadKind.PASS:
                detail = head.detail or "not-storable"
                if head.response is not None and fill.claim_pass():
                    return await self._relay(
                        request, head.response, replace(outcome, detail=detail)
                    )
                # a response not fit to share: this client goes upstream on its own
                return await self._pass(request, service, host, detail=detail)
            case HeadKind.NOT_MODIFIED:
                assert head.meta is not None
                entry = self.store.peek(key) or await self.store.get(key)
                if entry is None or not entry.bodies:
                    return await self._pass(request, service, host, detail="revalidated-gone")
                ttl = head.meta.freshness_lifetime - head.meta.age(self.clock())
                return await self._from_store(
                    request,
                    entry,
                    head.meta,
                    Decision(Action.SERVE, ttl=ttl),
                    replace(outcome, fwd_status=304, ttl=int(ttl)),
                )
            case HeadKind.ERROR:
                stale_meta = (
                    stale.meta if stale is not None and isinstance(stale.meta, ObjectMeta) else None
                )
                after = transitions.after_error(
                    stale_meta,
                    self.clock(),
                    verdict=verdict,
                    purged_at=self._purged_at(stale_meta, verdict),
                    unreachable=_unreachable(head),
                    max_stale_when_unreachable=service.max_stale_when_unreachable,
                )
                match after:
                    case ServeStale(reason=reason):
                        assert stale is not None and stale_meta is not None
                        if reason == "stale-if-error":
                            self.metrics.stale_if_error.inc()
                        else:
                            self.metrics.stale_unreachable.inc()
                        return await self._from_store(
                            request,
                            stale,
                            stale_meta,
                            decision,
                            replace(outcome, detail=reason),
                            stale=True,
                        )
                    case Error():
                        return self._error_answer(head, outcome)
                    case _:
                        assert_never(after)
            case HeadKind.STREAM:
                pass
            case _:
                assert_never(head.kind)
        assert head.meta is not None
        if fill.vary_fields and fill.store_key != _variant_key(
            fill.key.split("\x1f", 1)[0], fill.vary_fields, end_to_end_fields(request.headers)
        ):
            # the response varies on a field this request sends differently: it is not
            # this client's variant; look again (the Vary index is stored by now)
            return RESTART
        return await self._stream_fill(request, fill, head, replace(outcome, stored=True))

    def _joinable_fill(self, key: str, service: Service, host: str, target: str) -> Fill | None:
        """The fill in flight for `key`, unless a purge or an invalidation of its URI
        was applied after it started: then it may carry purged content, and a new
        fill takes its place."""
        fill = self.fills.get(key)
        if fill is not None and (
            self.rules.changed_since(service.name, fill.started_at)
            or self.rules.invalidated_since(service.name, host, target, fill.started_at)
        ):
            return None
        return fill

    def _start_fill(
        self,
        request: web.BaseRequest,
        service: Service,
        host: str,
        target: str,
        key: str,
        stale: StoredEntry | None,
    ) -> Fill:
        fill = self.fills.start(key, self.clock())
        headers = upstream_request_headers(
            request,
            host,
            cacheable=True,
            via=self._via,
            loop_token=self._loop_token,
            trusted=self._trusted(request),
        )
        if stale is not None and isinstance(stale.meta, ObjectMeta) and stale.bodies:
            # RFC 9111 4.3.1: validate with the stored validators
            if stale.meta.etag:
                headers["If-None-Match"] = stale.meta.etag
            last_modified = _header(stale.meta.upstream_headers, "last-modified")
            if last_modified:
                headers["If-Modified-Since"] = last_modified
        else:
            stale = None
        # the fields that went upstream, not the raw request: see end_to_end_fields
        job = FillJob(
            service, host, target, key, headers, stale, end_to_end_fields(request.headers)
        )
        task = asyncio.get_running_loop().create_task(self._run_fill(fill, job))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return fill

    async def _run_fill(self, fill: Fill, job: FillJob) -> None:
        """Fetch from upstream once for everyone waiting on `fill`, storing as it streams."""
        started = time.perf_counter()
        try:
            await self._fill_body(fill, job)
        except Exception:
            log.exception("fill of %s failed", job.key)
            fill.set_head(FillHead(HeadKind.ERROR, error=UpstreamError(502, "internal error")))
            fill.fail()
        finally:
            self.fills.done(fill)
            self.metrics.fill_seconds.observe(time.perf_counter() - started)

    async def _fill_body(self, fill: Fill, job: FillJob) -> None:
        service, key, stale = job.service, job.key, job.stale
        request_time = self.clock()
        try:
            response = await self.upstream.fetch(
                service, key, "GET", job.target, job.upstream_headers, None
            )
        except UpstreamError as exc:
            fill.set_head(FillHead(HeadKind.ERROR, error=exc))
            return
        self.metrics.upstream_requests.inc()
        response_time = self.clock()
        pairs = policy.upstream_header_pairs(response.header_pairs)
        limit = self._limits[service.name]
        revalidating = stale is not None and isinstance(stale.meta, ObjectMeta)
        fetched = transitions.after_fetch(
            response.status,
            job.request_headers,
            response.headers,
            revalidating=revalidating,
            limit=limit,
            close_delimited=_close_delimited(response),
            cache_close_delimited=service.cache_close_delimited,
            negative_ttl=service.negative_ttl,
            heuristic_with_credentials=self.options.heuristic_with_credentials,
        )
        match fetched:
            case NotModified():
                assert stale is not None and isinstance(stale.meta, ObjectMeta)
                response.release()
                merged = policy.merge_304_headers(stale.meta.upstream_headers, pairs)
                meta = self._meta(
                    job,
                    stale.meta.status,
                    merged,
                    request_time,
                    response_time,
                    fill.started_at,
                    response,
                )
                await self.store.put_meta(key, meta)
                fill.set_head(FillHead(HeadKind.NOT_MODIFIED, meta=meta))
                return
            case UpstreamFailed(status=status):
                body = await _read_limited(response, ERROR_BODY_LIMIT)
                fill.set_head(
                    FillHead(
                        HeadKind.ERROR,
                        error=UpstreamError(status, f"upstream answered {status}"),
                        error_status=status,
                        error_pairs=pairs,
                        error_body=body,
                    )
                )
                return
            case ServeWithoutStoring(reason=reason):
                if reason == "too-large":
                    self.metrics.not_stored_too_large.inc()
                elif reason == "close-delimited":
                    self.metrics.not_stored_close_delimited.inc()
                fill.set_head(FillHead(HeadKind.PASS, response=response, detail=reason))
                await self._close_unclaimed(fill, response)
                return
            case StoreAndServe(vary=key_fields):
                pass
            case _:
                assert_never(fetched)
        length = transitions.content_length(response.headers)
        store_key = key
        if key_fields:
            base_key = key.split("\x1f", 1)[0]
            store_key = _variant_key(base_key, key_fields, job.request_headers)
            await self._index_variant(base_key, key_fields, store_key, fill.started_at, service)
        fill.store_key = store_key
        fill.vary_fields = key_fields
        meta = self._meta(
            job, response.status, pairs, request_time, response_time, fill.started_at, response
        )
        writer = self.store.begin(store_key, meta.upstream_encoding)
        fill.set_head(
            FillHead(HeadKind.STREAM, meta=meta, length=length, encoding=meta.upstream_encoding),
            body_path=writer.path,
        )
        notifier = asyncio.get_running_loop().create_task(_forward_progress(writer, fill))
        try:
            response = await self._copy_upstream_body(job, response, writer, meta, length, limit)
            entry = await writer.commit(meta)
        except BaseException as exc:
            response.close()
            too_large = isinstance(exc, ObjectTooLarge)
            if too_large:
                # readers get the body up to the limit before the cut, so an edge
                # below sees the cut where its own limit is, not a failing shield
                with contextlib.suppress(StoreError):
                    await writer.flush()
                    fill.progress(writer.written)
            await writer.abort()
            fill.fail(drain=too_large)
            self.metrics.fill_failures.inc()
            if too_large:
                self.metrics.not_stored_too_large.inc()
                log.warning("fill of %s aborted: %s", store_key, exc)
                return
            raise
        finally:
            notifier.cancel()
        response.release()
        fill.finish(entry.bodies.get(meta.upstream_encoding))
        self.fills.done(fill)
        self.metrics.stored.inc()
        if self.options.compress and meta.compressible:
            source = entry.bodies.get(meta.upstream_encoding)
            if source is not None:
                try:
                    await make_variants(
                        self.store, store_key, source, meta.content_type, max_decoded=limit
                    )
                except DecodeLimit as exc:
                    await self._drop_undecodable(store_key, exc)
                except Exception:
                    log.exception("compressing %s failed", store_key)

    async def _copy_upstream_body(
        self,
        job: FillJob,
        response: UpstreamResponse,
        writer: BodyWriter,
        meta: ObjectMeta,
        length: int | None,
        limit: int,
    ) -> UpstreamResponse:
        """Write the upstream body to the store; if the upstream dies mid-body, take the
        rest from the next one (a GET is idempotent), so readers never see a cut.

        Returns the response the body was completed from. Raises `ObjectTooLarge` once
        the body passes `limit` bytes, whether or not any client still reads the fill.
        """
        for attempt in range(MID_BODY_RETRIES + 1):
            try:
                async for chunk in _skip_bytes(response.iter_chunks(), writer.received):
                    if writer.received + len(chunk) > limit:
                        await writer.write(chunk[: limit - writer.received])
                        raise ObjectTooLarge(f"body passes max_object_size ({limit} bytes)")
                    await writer.write(chunk)
                break
            except UpstreamError:
                response.close()
                if writer.received >= max(limit - LIMIT_CUT_SLACK, limit // 2):
                    # the tier above stopped at the same size limit (a shield aborts a
                    # fill there, sending what it has; the client library may drop its
                    # last buffered bytes at the cut): not a failing peer, and no
                    # other will do better
                    raise ObjectTooLarge(f"body reached max_object_size ({limit} bytes)") from None
                self.upstream.failed(response)
                if attempt == MID_BODY_RETRIES:
                    raise
            except BaseException:
                # the caller closes the first response; a retry's is closed here
                response.close()
                raise
            retry = await self.upstream.fetch(
                job.service, job.key, "GET", job.target, job.upstream_headers, None
            )
            same_length = retry.headers.get("content-length") == (
                str(length) if length is not None else None
            )
            if (
                retry.status != meta.status
                or not same_length
                or (meta.etag and retry.headers.get("etag") != meta.etag)
            ):
                retry.close()
                raise UpstreamError(502, "the upstream's body changed while refetching it")
            response = retry
        if length is not None and writer.received != length:
            raise UpstreamError(502, f"body ended at {writer.received} of {length} bytes")
        return response

    async def _index_variant(
        self, base_key: str, fields: tuple[str, ...], variant: str, now: float, service: Service
    ) -> None:
        """Record a URL's variant in its Vary index, evicting the oldest beyond the cap."""
        current = self.store.peek(base_key) or await self.store.get(base_key)
        variants: tuple[str, ...] = ()
        if current is not None and isinstance(current.meta, VaryIndex):
            if current.meta.fields == fields:
                variants = current.meta.variants
            else:
                # the origin changed what it varies on: the old variants are unreachable
                for old in current.meta.variants:
                    await self.store.delete(old)
        if variant in variants:
            return
        variants = (*variants, variant)
        while len(variants) > service.max_variants:
            await self.store.delete(variants[0])
            variants = variants[1:]
        await self.store.put_meta(base_key, VaryIndex(fields, now, variants))

    def _meta(
        self,
        job: FillJob,
        status: int,
        pairs: tuple[tuple[str, str], ...],
        request_time: float,
        response_time: float,
        stored_at: float,
        response: UpstreamResponse,
    ) -> ObjectMeta:
        encoding = (_header(pairs, "content-encoding") or "identity").lower()
        compressible = self.options.compress and (
            is_compressible(_header(pairs, "content-type")) or encoding != "identity"
        )
        return policy.build_meta(
            status=status,
            upstream_pairs=pairs,
            request_time=request_time,
            response_time=response_time,
            stored_at=stored_at,
            service=job.service.name,
            host=job.host,
            target=job.target,
            compressible=compressible,
            negative_ttl=job.service.negative_ttl,
            default_stale_if_error=job.service.default_stale_if_error,
            force_stale=response.headers.get(STALE_MARK) == "1",
            for_cdn=self.options.downstream_is_cdn,
        )

    async def _close_unclaimed(self, fill: Fill, response: UpstreamResponse) -> None:
        """Close a not-storable answer nobody took (its requester went away)."""
        if not await fill.pass_claimed(PASS_HANDOFF_SECONDS):
            response.close()

    def _revalidate_in_background(
        self,
        request: web.BaseRequest,
        service: Service,
        host: str,
        target: str,
        key: str,
        entry: StoredEntry,
    ) -> None:
        """RFC 5861 3: one background revalidation, however many stale hits ask for it."""
        if self._joinable_fill(key, service, host, target) is not None:
            return
        fill = self._start_fill(request, service, host, target, key, entry)
        self.metrics.background_revalidations.inc()

        async def drain() -> None:
            head = await fill.head()
            if head.kind is HeadKind.STREAM:
                with contextlib.suppress(FillFailed):
                    async for _ in fill.read():
                        pass
            elif head.kind is HeadKind.PASS and head.response is not None and fill.claim_pass():
                head.response.close()

        task = asyncio.get_running_loop().create_task(drain())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- responses ----------------------------------------------------------------------
    async def _from_store(
        self,
        request: web.BaseRequest,
        entry: StoredEntry,
        meta: ObjectMeta,
        decision: Decision,
        outcome: Outcome,
        *,
        stale: bool = False,
    ) -> web.StreamResponse:
        """Answer from a stored object: conditionals, Range, encoding, then the body."""
        headers = self._response_headers(meta, decision.age, outcome, stale)
        if meta.status == 200 and _has_preconditions(request):
            precondition = evaluate_preconditions(
                request.method, request.headers, meta.etag, meta.last_modified
            )
            if precondition is not None:
                self.metrics.hits.inc()
                return _tagged(web.Response(status=precondition, headers=headers), outcome)
        range_header = request.headers.get("range")
        encoding = choose_encoding(
            None if range_header else request.headers.get("accept-encoding"), entry.bodies.keys()
        )
        decoder: StreamDecoder | None = None
        if encoding is None:
            # the client takes none of the stored codings: decode the origin's on the way,
            # no further than the object size limit (a decompression bomb stops there);
            # an edge below gets the coding as stored (see _decoder_for)
            encoding = meta.upstream_encoding
            decoder = self._decoder_for(encoding, meta)
        body = entry.bodies.get(encoding)
        if body is None:
            return _error(
                502, "stored object has no body", refused("no-body"), self.options.node_name
            )
        if encoding != "identity" and decoder is None:
            headers["Content-Encoding"] = encoding
        self.metrics.hits.inc()
        status = meta.status
        start, end = 0, body.size
        if_range = request.headers.get("if-range")
        byte_range = (
            parse_range(range_header, body.size)
            if range_header and status == 200 and decoder is None
            else None
        )
        # RFC 9110 13.1.5: a failed If-Range means the whole representation
        if byte_range is not None and (
            if_range is None or if_range_allows(if_range, meta.etag, meta.last_modified)
        ):
            if isinstance(byte_range, Unsatisfiable):
                headers["Content-Range"] = unsatisfied_range(body.size)
                return _tagged(web.Response(status=416, headers=headers), outcome)
            status = 206
            start, end = byte_range.start, byte_range.end + 1
            headers["Content-Range"] = content_range(byte_range, body.size)
        if meta.status == 200:
            headers["Accept-Ranges"] = "bytes"
        self.metrics.bytes_sent.inc(end - start)
        if decoder is None:
            headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            response = _tagged(web.StreamResponse(status=status, headers=headers), outcome)
            await response.prepare(request)
            return response
        if body.data is not None and decoder is None:
            data = body.data if (start, end) == (0, body.size) else body.data[start:end]
            return _tagged(web.Response(status=status, headers=headers, body=data), outcome)
        try:
            return await self._stream_body(
                request,
                entry.key,
                _tagged(web.StreamResponse(status=status, headers=headers), outcome),
                body,
                start,
                end,
                decoder,
            )
        except BodyGone:
            # gone before any header left (replaced or evicted by another worker)
            raise _EntryGone(entry.key) from None

    async def _stream_body(
        self,
        request: web.BaseRequest,
        key: str,
        response: web.StreamResponse,
        body: BodyRef,
        start: int,
        end: int,
        decoder: StreamDecoder | None,
    ) -> web.StreamResponse:
        """Send a stored body: opened before the headers go, so a body replaced or
        evicted meanwhile is still read whole, and one already gone raises BodyGone
        while the request can still be answered another way.

        A body read whole from disk is checked against its checksum as it goes, its
        last chunk held back until the check passes: a mismatch cuts the connection
        (the client sees a truncated body, never a complete-looking corrupt one) and
        drops the object. Decoded output goes out one bounded piece at a time."""
        opened = await open_body(body) if body.data is None else None
        try:
            await response.prepare(request)
            chunks = (
                opened.chunks(start, end, COPY_CHUNK)
                if opened is not None
                else read_body(body, start, end, chunk_size=COPY_CHUNK)
            )
            try:
                async for chunk in chunks:
                    await _write_decoded(response, decoder, chunk)
                if decoder is not None:
                    await response.write(decoder.flush())
            except (BodyGone, DecodeError) as exc:
                # cut, never a short body that looks whole
                if isinstance(exc, BodyCorrupt):
                    await self._drop_corrupt(key, body)
                elif isinstance(exc, DecodeLimit):
                    await self._drop_undecodable(key, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        finally:
            if opened is not None:
                await opened.close()

    async def _stream_fill(
        self, request: web.BaseRequest, fill: Fill, head: FillHead, outcome: Outcome
    ) -> web.StreamResponse:
        """Answer from a fill while it is still arriving (every waiter reads the file)."""
        assert head.meta is not None
        meta = head.meta
        headers = self._response_headers(meta, meta.age(self.clock()), outcome, False)
        if meta.status == 200 and _has_preconditions(request):
            precondition = evaluate_preconditions(
                request.method, request.headers, meta.etag, meta.last_modified
            )
            if precondition is not None:
                return _tagged(web.Response(status=precondition, headers=headers), outcome)
        decoder: StreamDecoder | None = None
        if head.encoding != "identity":
            if choose_encoding(request.headers.get("accept-encoding"), (head.encoding,)) is None:
                decoder = self._decoder_for(head.encoding, meta)
            if decoder is None:
                headers["Content-Encoding"] = head.encoding
        status, start, end = meta.status, 0, head.length
        if meta.status == 200 and head.length is not None:
            headers["Accept-Ranges"] = "bytes"
            byte_range = _requested_range(request, meta, head.length, decoder, head.encoding)
            if isinstance(byte_range, Unsatisfiable):
                headers["Content-Range"] = unsatisfied_range(head.length)
                return _tagged(web.Response(status=416, headers=headers), outcome)
            if byte_range is not None:
                # the fill stores the whole object; this client gets its range of it
                status, start, end = 206, byte_range.start, byte_range.end + 1
                headers["Content-Range"] = content_range(byte_range, head.length)
        if end is not None and decoder is None:
            headers["Content-Length"] = str(end - start)
        response = _tagged(web.StreamResponse(status=status, headers=headers), outcome)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        try:
            async for chunk in fill.read(start, end if status == 206 else None):
                self.metrics.bytes_sent.inc(len(chunk))
                await _write_decoded(response, decoder, chunk)
            if decoder is not None:
                await response.write(decoder.flush())
        except (FillFailed, BodyGone, DecodeError) as exc:
            if isinstance(exc, DecodeLimit):
                self.metrics.decode_refused.inc()
            # the headers are gone already: cut the connection so the client sees a
            # truncated body, never a short one that looks complete
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _decoder_for(self, encoding: str, meta: ObjectMeta) -> StreamDecoder | None:
        """The decoder of a stored coding for a client that does not accept it, bounded
        by the object size limit; None when the client is one of our edges.

        An edge stores a coding as sent and decodes it itself, bounded, once (in
        make_variants) and per client that needs it. A shield that decoded for its
        edges would spend its CPU on every edge's copy, and a decoding stopped at the
        size limit would reach the edge as a cut, which it takes for a dead shield.
        """
        if self.options.downstream_is_cdn:
            return None
        return StreamDecoder(encoding, self._limits.get(meta.service))

    def _corrupt_found(self, key: str) -> None:
        """The store found a body whose checksum fails (it has dropped the object)."""
        self.metrics.store_corrupt.inc()
        self._prepared = {k: v for k, v in self._prepared.items() if k[0] != key}
        log.error("stored body of %s failed its checksum: object dropped", key)

    async def _drop_corrupt(self, key: str, body: BodyRef) -> None:
        """A body streamed from disk failed its checksum: drop its object."""
        await self.store.drop_corrupt(key, body)

    async def _drop_undecodable(self, key: str, exc: DecodeLimit) -> None:
        """A stored coded body decodes past the object size limit (a decompression
        bomb): it is not kept, as a body over the limit is never stored."""
        log.warning("dropping %s: %s", key, exc)
        await self.store.delete(key)
        self.metrics.decode_refused.inc()

    def _response_headers(
        self, meta: ObjectMeta, age: float, outcome: Outcome, stale: bool
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(meta.client_headers)
        headers["Age"] = str(int(age))
        headers["Via"] = f"{meta.upstream_via}, {self._via}" if meta.upstream_via else self._via
        headers["Cache-Status"] = outcome.cache_status(
            self.options.node_name, meta.upstream_cache_status
        )
        if meta.compressible:
            vary = headers.get("Vary")
            if not vary:
                headers["Vary"] = "Accept-Encoding"
            elif "accept-encoding" not in vary.lower():
                headers["Vary"] = f"{vary}, Accept-Encoding"
        if stale and self.options.mark_stale:
            headers[STALE_MARK] = "1"
        return headers

    def _error_answer(self, head: FillHead, outcome: Outcome) -> web.StreamResponse:
        if head.error_status:
            relayed = replace(outcome, fwd_status=head.error_status, error=ErrorSource.UPSTREAM)
            headers: CIMultiDict[str] = CIMultiDict(policy.client_header_pairs(head.error_pairs))
            headers["Cache-Status"] = relayed.cache_status(self.options.node_name)
            response = web.Response(status=head.error_status, headers=headers, body=head.error_body)
            return _tagged(response, relayed)
        error = head.error or UpstreamError(502, "upstream failed")
        self.metrics.upstream_errors.inc()
        # the upstream's state-change log has the details: a line per request would
        # bury them during an outage
        log.debug("upstream error: %s", error)
        response = _error(
            error.status,
            error.reason,
            replace(outcome, detail=_detail_token(error.reason), error=ErrorSource.UPSTREAM),
            self.options.node_name,
        )
        if error.unreachable:
            # the origin could not be reached at all: a tier below that holds a stale
            # copy may serve it (RFC 9111 4.2.4), as for its own connect failure
            response.headers[GENERATED_ERROR_HEADER] = UNREACHABLE
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    # -- pass-through -------------------------------------------------------------------
    async def _pass(
        self,
        request: web.BaseRequest,
        service: Service,
        host: str,
        detail: str = "",
        *,
        invalidate: bool = False,
    ) -> web.StreamResponse:
        """Send the request on unchanged (but for hygiene) and relay the answer.

        `invalidate`: an unsafe method (RFC 9111 4.4); once the upstream's status says
        it succeeded, and before any of the answer leaves, the target URI is invalidated.
        """
        self.metrics.passes.inc()
        # the body goes on with framing of our own: its length if the client gave one,
        # else (chunked) aiohttp sends it chunked; nothing announced that is not sent
        body: aiohttp.StreamReader | None = request.content if request.body_exists else None
        headers = upstream_request_headers(
            request,
            host,
            cacheable=False,
            via=self._via,
            loop_token=self._loop_token,
            trusted=self._trusted(request),
            body_length=request.content_length if body is not None else None,
        )
        target = normalize_target(
            origin_form(request.raw_path), False, service.cache_key.drop_params
        )
        key = primary_key(service.name, host, target)
        try:
            upstream = await self.upstream.fetch(
                service, key, request.method, target, headers, body
            )
        except UpstreamError as exc:
            self.metrics.upstream_errors.inc()
            log.debug("%s %s: upstream error: %s", request.method, target, exc)
            response = _error(
                exc.status,
                exc.reason,
                Outcome(
                    fwd="request", detail=_detail_token(exc.reason), error=ErrorSource.UPSTREAM
                ),
                self.options.node_name,
            )
            if exc.retry_after is not None:
                response.headers["Retry-After"] = str(exc.retry_after)
            return response
        if invalidate and 200 <= upstream.status < 400:
            await self._invalidate(service, host, target, upstream.headers)
        return await self._relay(request, upstream, Outcome(fwd="request", detail=detail))

    def _trusted(self, request: web.BaseRequest) -> bool:
        """Whether the peer's forwarding fields are kept (see edge.forwarding)."""
        return is_trusted_peer(request, self.options.trusted_proxies, self.options.node_token)

    async def _relay(
        self, request: web.BaseRequest, upstream: UpstreamResponse, outcome: Outcome
    ) -> web.StreamResponse:
        pairs = policy.upstream_header_pairs(upstream.header_pairs)
        headers: CIMultiDict[str] = CIMultiDict(
            policy.client_header_pairs(pairs, for_cdn=self.options.downstream_is_cdn)
        )
        # relayed as received, so its coding, age and date stay the upstream's
        for name in ("Content-Encoding", "Age", "Date"):
            value = upstream.headers.get(name)
            if value is not None:
                headers[name] = value
        upstream_status = ", ".join(upstream.headers.getall("cache-status", []))
        outcome = replace(outcome, fwd_status=upstream.status)
        headers["Cache-Status"] = outcome.cache_status(self.options.node_name, upstream_status)
        upstream_via = ", ".join(upstream.headers.getall("via", []))
        headers["Via"] = f"{upstream_via}, {self._via}" if upstream_via else self._via
        length = upstream.headers.get("content-length")
        if length is not None:
            headers["Content-Length"] = length
        response = _tagged(web.StreamResponse(status=upstream.status, headers=headers), outcome)
        try:
            await response.prepare(request)
            if request.method != "HEAD" and upstream.status not in (204, 304):
                async for chunk in upstream.iter_chunks():
                    await response.write(chunk)
            await response.write_eof()
        except UpstreamError:
            upstream.close()
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            upstream.release()
        return response

    async def _invalidate(
        self, service: Service, host: str, target: str, response_headers: CIMultiDictProxy[str]
    ) -> None:
        """RFC 9111 4.4: an unsafe request that succeeded invalidates the target URI,
        and the URIs in Location and Content-Location when their host is the same.

        Done as a rule at lookup (`PurgeRules.invalidate`), so it covers every variant,
        the memory tier, and fills in flight that started before it; the primary entry
        is deleted too, to give its space back. The rule is this process's own: other
        worker processes of the node see the deletion from the shared index, and drop
        their memory-tier copy when its memory lifetime ends.
        """
        base = f"http://{host}"
        targets = {target}
        for name in ("location", "content-location"):
            value = response_headers.get(name)
            if not value:
                continue
            parts = urlsplit(urljoin(base + target, value.strip()))
            if parts.scheme in ("http", "https") and (parts.hostname or "") == host:
                targets.add((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        now = self.clock()
        policy_ = service.cache_key
        for raw in targets:
            keyed = normalize_target(raw, policy_.sort_query, policy_.drop_params)
            self.rules.invalidate(service.name, host, keyed, now)
            await self.store.delete(primary_key(service.name, host, keyed))
            self.metrics.invalidations.inc()

    async def close(self, grace: float = 5.0) -> None:
        """Let fills in flight finish for up to `grace` seconds, then cancel the rest
        (a cancelled fill is discarded, never stored half)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=grace)
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _forward_progress(writer: BodyWriter, fill: Fill) -> None:
    """Wake the fill's readers whenever the writer puts more bytes on disk."""
    written = 0
    while not writer.finished:
        written = await writer.wait_written(written)
        fill.progress(written)


async def _write_decoded(
    response: web.StreamResponse, decoder: StreamDecoder | None, chunk: bytes
) -> None:
    """Write `chunk`, decoded one bounded piece at a time when `decoder` is set (each
    piece is written, and the transport drained, before the next is made)."""
    if decoder is None:
        await response.write(chunk)
        return
    for piece in decoder.iter_decode(chunk):
        await response.write(piece)


def _close_delimited(response: UpstreamResponse) -> bool:
    """Whether the body's end cannot be told from a cut: framed by the connection's
    close at the next tier (RFC 9112 6.3 item 8), or at a tier above, which says so
    in its Cache-Status entry (it relays such a body chunked, unstored)."""
    if response.close_delimited:
        return True
    return any(
        CLOSE_DELIMITED_DETAIL in entry for entry in response.headers.getall("cache-status", [])
    )


async def _skip_bytes(chunks: AsyncIterator[bytes], count: int) -> AsyncIterator[bytes]:
    """The chunks after their first `count` bytes."""
    async for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0


async def _read_limited(response: UpstreamResponse, limit: int) -> bytes:
    body = bytearray()
    try:
        async for chunk in response.iter_chunks():
            body += chunk
            if len(body) >= limit:
                break
    except UpstreamError:
        pass
    finally:
        response.close()
    return bytes(body[:limit])


def _variant_key(
    key: str, fields: tuple[str, ...], request_headers: CIMultiDictProxy[str] | CIMultiDict[str]
) -> str:
    return f"{key}\x1f{secondary_key(fields, request_headers)}"


def _header(pairs: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in pairs:
        if key.lower() == name:
            return value
    return None


_PRECONDITIONS = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since")


def _has_preconditions(request: web.BaseRequest) -> bool:
    headers = request.headers
    return any(name in headers for name in _PRECONDITIONS)


def _requested_range(
    request: web.BaseRequest,
    meta: ObjectMeta,
    size: int,
    decoder: StreamDecoder | None,
    encoding: str,
) -> ByteRange | Unsatisfiable | None:
    """The single range a client asked for, as `_from_store` would grant it: on the
    identity body only, not when If-Range fails (RFC 9110 13.1.5), multiple ranges
    answered whole (None)."""
    range_header = request.headers.get("range")
    if not range_header or decoder is not None or encoding != "identity":
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and not if_range_allows(if_range, meta.etag, meta.last_modified):
        return None
    return parse_range(range_header, size)


def _unreachable(head: FillHead) -> bool:
    """Whether a fill's error means the origin could not be reached (RFC 9111 4.2.4's
    "disconnected"), as opposed to an answer with a 5xx status: our own failure to
    connect, or a shield's generated error saying the same."""
    if head.error_status:
        return _header(head.error_pairs, GENERATED_ERROR_HEADER.lower()) == UNREACHABLE
    return head.error is not None and head.error.unreachable


def _error(status: int, reason: str, outcome: Outcome, node: str) -> web.Response:
    """An error this node answers: a short reason, never an internal address (those
    go to the log)."""
    response = web.Response(status=status, text=f"{status} {reason}\n")
    if outcome.error is ErrorSource.UPSTREAM:
        # this node answered for a failure beyond it (origin down, origin connection
        # cap); the tier below passes such errors on instead of failing over
        response.headers[GENERATED_ERROR_HEADER] = "upstream"
    response.headers["Cache-Status"] = outcome.cache_status(node)
    return _tagged(response, outcome)


#: Methods whose requests may not carry a body here (see Engine.handle).
_NO_BODY_METHODS = frozenset({"GET", "HEAD"})


def _refuse(status: int, reason: str, detail: str) -> web.Response:
    """A 4xx for a request we will not handle; the connection is closed after it, since
    the rest of what the client sent (an unread body) cannot be trusted as framing."""
    response = web.Response(status=status, text=f"{status} {reason}\n")
    response.force_close()
    return _tagged(response, refused(detail))


#: Where a response carries its request's Outcome (see `outcome_of`).
OUTCOME = "edgeshield.outcome"


def _tagged(response: _R, outcome: Outcome) -> _R:
    response[OUTCOME] = outcome
    return response


def outcome_of(response: web.StreamResponse) -> Outcome:
    """The Outcome the engine decided for `response` (one it made itself, if untagged)."""
    outcome = response.get(OUTCOME)
    return outcome if isinstance(outcome, Outcome) else refused("internal-error")


def _detail_token(reason: str) -> str:
    """A short reason as a Cache-Status detail token ("origin unreachable" →
    "origin-unreachable")."""
    return "-".join(reason.split()) or "error"
