"""The fast lane: a plain GET for a fresh object whose body is in memory, with no await.

Most traffic of a CDN is hits on a few hot objects; for them the route (Host and raw
target to cache key) and the answer's headers per Accept-Encoding are computed once
and kept. Freshness and age come from the same arithmetic as every other path
(`transitions.freshness`, i.e. `ObjectMeta.age`); anything the lane does not decide
(preconditions, Range, loops, Vary, purges that cover the object, staleness) sends
the request down the full path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from multidict import CIMultiDict

from edge.cache import transitions
from edge.cache.encoding import choose_encoding
from edge.cache.model import ObjectMeta
from edge.cache.purge import MAX_RULE_AGE, PurgeRules, PurgeVerdict
from edge.front.types import RequestHead, ResponseSink
from edge.metrics import NodeMetrics
from edge.outcome import Outcome
from edge.responding import Responder
from edge.store import MemoryTier, ObjectStore, StoredEntry

#: Entries in each fast-lane table before it is emptied and refilled.
HOT_PATH_ENTRIES = 50_000
#: Prepared answers of one key (one per Accept-Encoding value seen) before they are
#: dropped and made again.
CODINGS_PER_KEY = 16


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a (Host, target) pair leads: its primary cache key."""

    key: str


@dataclass(frozen=True, slots=True, eq=False)
class PreparedHit:
    """A hot hit's answer, less Age and Cache-Status (set per response)."""

    entry: StoredEntry
    headers: CIMultiDict[str]
    body: bytes
    size: int
    status_prefix: str
    status: int = 200
    #: a front's serialised head of this answer ("h1": the head less the fields set
    #: per response, and whether it has its own Date), made once, gone with it
    heads: dict[str, tuple[bytes, bool]] = field(default_factory=dict)


class HotLane:
    """The fast lane's two bounded tables and the lookup through them."""

    def __init__(
        self,
        store: ObjectStore,
        rules: PurgeRules,
        metrics: NodeMetrics,
        clock: Callable[[], float],
        responder: Responder,
    ) -> None:
        self.store = store
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self._responder = responder
        self._node_name = responder.options.node_name
        #: (Host, raw target) → cache key; key → Accept-Encoding → the prepared
        #: answer. Both bounded; entries are checked against the store.
        self._routes: dict[tuple[str | None, str], _Route] = {}
        self._prepared: dict[str, dict[str | None, PreparedHit]] = {}
        memory = getattr(store, "memory", None)
        if isinstance(memory, MemoryTier):
            # a prepared answer holds its entry: it goes when the entry leaves the
            # memory tier, or the lane would keep bodies alive beyond the tier's bound
            memory.on_drop.append(self.forget)

    def remember(self, host: str | None, raw_target: str, key: str) -> None:
        """Where a (Host, raw target) pair leads, for the next request for it."""
        if len(self._routes) >= HOT_PATH_ENTRIES:
            self._routes.clear()
        self._routes[(host, raw_target)] = _Route(key)

    def forget_routes(self) -> None:
        """Drop every (Host, target) route (the services changed)."""
        self._routes.clear()

    def forget(self, key: str) -> None:
        """Drop the prepared answers of `key` (its entry left the memory tier, or its
        stored body was found corrupt)."""
        self._prepared.pop(key, None)

    def hit(self, request: RequestHead, sink: ResponseSink) -> Outcome | None:
        """The fast lane: a plain GET for a fresh object whose body is in memory.

        Everything here was computed before (the route, the headers of the chosen
        coding); anything unusual (preconditions, Range, loops, Vary, purges that
        cover the object, staleness) returns None and takes the full path.
        """
        found = self.prepared_hit(request)
        if found is None:
            return None
        prepared, age, outcome, member = found
        response_headers = prepared.headers.copy()
        response_headers["Age"] = str(int(age))
        response_headers["Cache-Status"] = member
        sink.send(prepared.status, response_headers, prepared.body)
        return outcome

    def prepared_hit(self, request: RequestHead) -> tuple[PreparedHit, float, Outcome, str] | None:
        """The hot lane's answer to `request` without writing it: the prepared answer,
        the current age, the Outcome and the Cache-Status value (counted as a hit);
        None when the full path must answer. A front of our own writes the prepared
        head itself (edge.front.protocol)."""
        headers = request.headers
        route = self._routes.get((headers.get("Host"), request.target))
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
        if self.rules.version and purge_verdict(self.rules, meta, now) is not PurgeVerdict.NONE:
            return None
        by_coding = self._prepared.get(route.key)
        prepared = by_coding.get(headers.get("Accept-Encoding")) if by_coding else None
        if prepared is None or prepared.entry is not entry:
            prepared = self._prepare(route.key, entry, meta, headers.get("Accept-Encoding"))
            if prepared is None:
                return None
        outcome = Outcome(hit=True, ttl=int(ttl))
        self.metrics.hits.inc()
        self.metrics.bytes_sent.inc(prepared.size)
        return prepared, age, outcome, prepared.status_prefix + outcome.member()

    def _prepare(
        self, key: str, entry: StoredEntry, meta: ObjectMeta, accept_encoding: str | None
    ) -> PreparedHit | None:
        """Headers and body of a hot hit, computed once per entry and Accept-Encoding."""
        if entry.key in self._responder.compressing:
            # its variants are on their way: the answer's Vary is not settled yet
            return None
        encoding = choose_encoding(accept_encoding, entry.bodies.keys())
        if encoding is None:
            return None
        body = entry.bodies.get(encoding)
        if body is None or body.data is None:
            return None
        headers = self._responder.response_headers(
            meta, 0, Outcome(), False, codings=entry.bodies.keys()
        )
        del headers["Age"]
        del headers["Cache-Status"]
        if encoding != "identity":
            headers["Content-Encoding"] = encoding
        if meta.status == 200:
            headers["Accept-Ranges"] = "bytes"
        own = f"{self._node_name}; "
        prefix = f"{meta.upstream_cache_status}, {own}" if meta.upstream_cache_status else own
        prepared = PreparedHit(entry, headers, body.data, body.size, prefix, meta.status)
        by_coding = self._prepared.get(key)
        if by_coding is None:
            if len(self._prepared) >= HOT_PATH_ENTRIES:
                self._prepared.clear()
            by_coding = self._prepared[key] = {}
        elif len(by_coding) >= CODINGS_PER_KEY:
            by_coding.clear()  # the field is the client's: bound what one key holds
        by_coding[accept_encoding] = prepared
        return prepared


def purge_verdict(rules: PurgeRules, meta: ObjectMeta, now: float) -> PurgeVerdict:
    """Whether a purge rule covers a stored object (STALE once rules that old are gone)."""
    if rules.version == 0:
        return PurgeVerdict.NONE
    if meta.stored_at < now - MAX_RULE_AGE:
        # rules this old are dropped, so an object this old is validated instead
        return PurgeVerdict.STALE
    return rules.verdict(meta.service, meta.host, meta.target, meta.surrogate_keys, meta.stored_at)
