"""Filling: one upstream fetch per object, stored as it streams, for every waiter.

The engine starts a fill (`Filler.start`) with a `FillJob`; the fill task fetches,
asks `transitions.after_fetch` what the answer is, and carries that out: freshen the
stored object on a 304, hand an error or a not-storable answer to the requests
waiting, or write the body to the store (indexing its Vary variant) while every
waiter reads it from the `Fill` (edge.fill). A body cut mid-way is completed from
the next upstream, so a reader never sees a short body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import NamedTuple, assert_never

from multidict import CIMultiDict

from edge.cache import policy, transitions
from edge.cache.encoding import compression_eligible
from edge.cache.model import ObjectMeta
from edge.cache.purge import PurgeRules
from edge.cache.rules import stored_fields
from edge.cache.transitions import NotModified, ServeWithoutStoring, StoreAndServe, UpstreamFailed
from edge.fill import Fill, FillFailed, FillHead, FillTable, HeadKind, read_limited, skip_bytes
from edge.fill_variants import drop_undecodable, index_variant, make_coded_variants, variant_key
from edge.metrics import NodeMetrics
from edge.options import STALE_MARK, EngineOptions, Upstream
from edge.store import BodyWriter, ObjectStore, StoredEntry, StoreError
from edge.upstream import UpstreamError, UpstreamResponse
from fleet.config import Service

log = logging.getLogger("edgeshield.engine")

__all__ = ["FillJob", "Filler", "ObjectTooLarge", "drop_undecodable", "header_value", "variant_key"]

ERROR_BODY_LIMIT = 64 * 1024
#: How often a fill takes the rest of a body from another upstream after a cut.
MID_BODY_RETRIES = 2
#: How long a not-storable answer waits for the request that caused it to take it.
PASS_HANDOFF_SECONDS = 10.0
#: The Cache-Status detail of an answer passed on unstored because its body's end
#: cannot be told from a cut connection; a tier below that sees it does not store either
CLOSE_DELIMITED_DETAIL = "detail=close-delimited"
#: A cut this close to the size limit is the tier above stopping there.
LIMIT_CUT_SLACK = 1024 * 1024


class ObjectTooLarge(Exception):
    """A fill's body passed the object size limit: it is aborted, never committed."""


class FillJob(NamedTuple):
    """What a fill fetches: the object, and the request it is fetched for (a named
    tuple, as `FillHead`: one per fill)."""

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


class Filler:
    """Runs a node's fills: at most one upstream fetch per cache key at a time."""

    def __init__(
        self,
        options: EngineOptions,
        store: ObjectStore,
        upstream: Upstream,
        rules: PurgeRules,
        metrics: NodeMetrics,
        clock: Callable[[], float],
        limits: dict[str, int],
    ) -> None:
        self.options = options
        self.store = store
        self.upstream = upstream
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self.fills = FillTable()
        #: told the key of a body refused for decoding past its limit (the engine's)
        self.on_refused: Callable[[str], None] | None = None
        self._limits = limits
        self._background: set[asyncio.Task[None]] = set()
        #: keys whose br/gzip variants are being made (see Responder.compressing)
        self.compressing: set[str] = set()

    def start(self, job: FillJob) -> Fill:
        """Start fetching `job` in the background; waiters read the returned fill."""
        fill = self.fills.start(job.key, self.clock())
        self._spawn(self._run_fill(fill, job))
        return fill

    def revalidate(self, job: FillJob) -> None:
        """RFC 5861 3: one background revalidation, however many stale hits ask for it."""
        fill = self.start(job)
        self.metrics.background_revalidations.inc()

        async def drain() -> None:
            head = await fill.head()
            if head.kind is HeadKind.STREAM:
                with contextlib.suppress(FillFailed):
                    async for _ in fill.read():
                        pass
            elif head.kind is HeadKind.PASS and head.response is not None and fill.claim_pass():
                head.response.close()

        self._spawn(drain())

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def joinable(self, key: str, service: Service, host: str, target: str) -> Fill | None:
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
        # One map of the answer's fields, end to end (RFC 9110 7.6.1: hop-by-hop fields
        # and those Connection names taken out once, here): every decision below reads
        # it, and build_meta keeps it rather than making its own
        pairs = policy.upstream_header_pairs(response.header_pairs)
        fields = CIMultiDict(pairs)
        close_delimited = _close_delimited(response, fields)
        force_stale = fields.get(STALE_MARK) == "1"
        # traffic rules that change the answer (TTL, fields) apply before it is stored
        ruled = stored_fields(service.traffic, job.host, job.target, job.request_headers, pairs)
        if ruled is not pairs:
            pairs, fields = ruled, CIMultiDict(ruled)
        limit = self._limits[service.name]
        revalidating = stale is not None and isinstance(stale.meta, ObjectMeta)
        fetched = transitions.after_fetch(
            response.status,
            job.request_headers,
            fields,
            revalidating=revalidating,
            limit=limit,
            close_delimited=close_delimited,
            cache_close_delimited=service.cache_close_delimited,
            negative_ttl=service.negative_ttl,
            heuristic_with_credentials=self.options.heuristic_with_credentials,
            stored_etag=stale.meta.etag
            if stale is not None and isinstance(stale.meta, ObjectMeta)
            else None,
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
                    None,
                    request_time,
                    response_time,
                    fill.started_at,
                    force_stale,
                )
                await self.store.put_meta(key, meta)
                fill.set_head(FillHead(HeadKind.NOT_MODIFIED, meta=meta))
                return
            case UpstreamFailed(status=status):
                body = await read_limited(response, ERROR_BODY_LIMIT)
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
                if revalidating:
                    # RFC 9111 4.3.3: a full response to a validation request means the
                    # stored one is no longer suitable; left in place, every stale hit
                    # would start another revalidation that cannot replace it
                    await self.store.delete(key)
                fill.set_head(FillHead(HeadKind.PASS, response=response, detail=reason))
                await self._close_unclaimed(fill, response)
                return
            case StoreAndServe(vary=key_fields):
                pass
            case _:
                assert_never(fetched)
        length = transitions.content_length(fields)
        store_key = key
        if key_fields:
            base_key = key.split("\x1f", 1)[0]
            store_key = variant_key(base_key, key_fields, job.request_headers)
            await index_variant(
                self.store, base_key, key_fields, store_key, fill.started_at, service.max_variants
            )
        fill.store_key = store_key
        fill.vary_fields = key_fields
        meta = self._meta(
            job,
            response.status,
            pairs,
            fields,
            request_time,
            response_time,
            fill.started_at,
            force_stale,
        )
        writer = self.store.begin(
            store_key, meta.upstream_encoding, durable=job.service.durable_objects
        )
        writer.expected = length
        fill.set_head(
            FillHead(HeadKind.STREAM, meta=meta, length=length, encoding=meta.upstream_encoding),
            body_path=writer.path,
        )
        # readers of a small body wait for the commit, not for bytes on disk
        notifier = (
            None
            if fill.whole_at_commit
            else asyncio.get_running_loop().create_task(_forward_progress(writer, fill))
        )
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
            if notifier is not None:
                notifier.cancel()
        response.release()
        compressing = self.options.compress and meta.compressible
        if compressing:
            # until its variants are made, an answer from it varies on Accept-Encoding
            self.compressing.add(store_key)
        fill.finish(entry.bodies.get(meta.upstream_encoding))
        self.fills.done(fill)
        self.metrics.stored.inc()
        if writer.durable:
            self.metrics.durable_commits.inc()
        if compressing:
            try:
                await make_coded_variants(
                    self.store,
                    self.metrics,
                    store_key,
                    entry.bodies.get(meta.upstream_encoding),
                    meta.content_type,
                    limit,
                    self.on_refused,
                )
            finally:
                self.compressing.discard(store_key)

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
                whole = None if writer.received else response.take_whole()
                if whole is not None:
                    if whole:
                        await _write_within(writer, whole, limit)
                    break
                chunks = response.iter_chunks()
                if writer.received:  # a retry: the bytes already written are skipped
                    chunks = skip_bytes(chunks, writer.received)
                async for chunk in chunks:
                    await _write_within(writer, chunk, limit)
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

    def _meta(
        self,
        job: FillJob,
        status: int,
        pairs: tuple[tuple[str, str], ...],
        fields: CIMultiDict[str] | None,
        request_time: float,
        response_time: float,
        stored_at: float,
        force_stale: bool,
    ) -> ObjectMeta:
        """The metadata to store: `fields` is `pairs` as a map, when the caller has
        made it (None: build_meta makes it)."""
        found = fields if fields is not None else _first_values(pairs, _META_FIELDS)
        encoding = (found.get("content-encoding") or "identity").lower()
        length = found.get("content-length")
        compressible = self.options.compress and compression_eligible(
            found.get("content-type"),
            encoding,
            int(length) if length is not None and length.isdigit() else None,
            job.service.compress_min_size,
        )
        return policy.build_meta(
            status=status,
            upstream_pairs=pairs,
            upstream_fields=fields,
            request_time=request_time,
            response_time=response_time,
            stored_at=stored_at,
            service=job.service.name,
            host=job.host,
            target=job.target,
            compressible=compressible,
            negative_ttl=job.service.negative_ttl,
            default_stale_if_error=job.service.default_stale_if_error,
            force_stale=force_stale,
            for_cdn=self.options.downstream_is_cdn,
        )

    async def _close_unclaimed(self, fill: Fill, response: UpstreamResponse) -> None:
        """Close a not-storable answer nobody took (its requester went away)."""
        if not await fill.pass_claimed(PASS_HANDOFF_SECONDS):
            response.close()

    @property
    def background_tasks(self) -> int:
        """How many fills, revalidations and variant builds are under way (what
        `close` waits for)."""
        return len(self._background)

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


def _close_delimited(response: UpstreamResponse, fields: CIMultiDict[str]) -> bool:
    """Whether the body's end cannot be told from a cut: framed by the connection's
    close at the next tier (RFC 9112 6.3 item 8), or at a tier above, which says so
    in its Cache-Status entry (it relays such a body chunked, unstored); `fields`:
    the answer's end-to-end fields."""
    # framed by its length (RFC 9112 6.3 item 6) unless Connection named the field,
    # which only the response's own reading of its framing can then tell
    if "content-length" not in fields and response.close_delimited:
        return True
    entries = fields.getall("cache-status", None)
    return entries is not None and any(CLOSE_DELIMITED_DETAIL in entry for entry in entries)


async def _write_within(writer: BodyWriter, chunk: bytes, limit: int) -> None:
    """Write `chunk` of a body; past `limit` bytes in all, write up to the limit and
    raise ObjectTooLarge (readers get the body up to the cut)."""
    if writer.received + len(chunk) > limit:
        await writer.write(chunk[: limit - writer.received])
        raise ObjectTooLarge(f"body passes max_object_size ({limit} bytes)")
    await writer.write(chunk)


#: the fields `Filler._meta` reads of an answer's
_META_FIELDS = frozenset({"content-encoding", "content-length", "content-type"})


def _first_values(pairs: tuple[tuple[str, str], ...], names: frozenset[str]) -> dict[str, str]:
    """The first value of each of the (lower-case) fields `names` in `pairs`, found
    in one pass (`header_value` for each would pass over the fields once per name)."""
    found: dict[str, str] = {}
    for name, value in pairs:
        lower = name.lower()
        if lower in names and lower not in found:
            found[lower] = value
    return found


def header_value(pairs: tuple[tuple[str, str], ...], name: str) -> str | None:
    """The first value of the (lower-case) field `name` in `pairs`."""
    for key, value in pairs:
        if key.lower() == name:
            return value
    return None
