"""The fast lane: a plain GET for a fresh object whose body is in memory, with no await.

Most traffic of a CDN is hits on a few hot objects; for them the route (Host and raw
target to cache key) and the answer's headers per Accept-Encoding are computed once
and kept. The HTTP/1.1 front also answers here a small object the memory tier does
not hold but the store reads without waiting (`ObjectStore.get_now`), its key
computed here when no route is known: over a large store most hits are that.
Freshness and age come from the same arithmetic as every other path
(`transitions.freshness`, i.e. `ObjectMeta.age`); anything the lane does not decide
(preconditions, Range, loops, Vary, purges that cover the object, staleness) sends
the request down the full path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

from multidict import CIMultiDict, CIMultiDictProxy, istr

from edge.cache import transitions
from edge.cache.encoding import choose_encoding
from edge.cache.keys import TargetKeys, primary_key
from edge.cache.model import ObjectMeta
from edge.cache.purge import MAX_RULE_AGE, PurgeRules, PurgeVerdict
from edge.forwarding import request_host
from edge.front.types import RequestHead, ResponseSink
from edge.metrics import NodeMetrics
from edge.outcome import Outcome, fresh_hit
from edge.responding import Responder
from edge.store import MemoryTier, ObjectStore, StoredEntry
from edge.store.ready import CODED_SIZE, ReadyRecord, coded_answer
from fleet.config import Service

#: Entries in each fast-lane table before it is emptied and refilled.
HOT_PATH_ENTRIES = 50_000
#: (Host, target) pairs seen once and not yet given a route (their hashes): a route
#: is remembered on a pair's second sighting within this many
ROUTE_SIGHTINGS = 16_384
#: Prepared answers of one key (one per Accept-Encoding value seen) before they are
#: dropped and made again.
CODINGS_PER_KEY = 16
#: Host field values whose service and key start are remembered (`_key_start`)
#: before the table is emptied
HOST_FIELDS = 1024
#: Accept-Encoding values whose choice between identity alone is remembered (a
#: ready answer is identity: `HotLane._takes_identity`) before the table is emptied
ACCEPT_ENCODINGS = 1024


_HOST = istr("Host")
_ACCEPT_ENCODING = istr("Accept-Encoding")
#: how a Host field keys its requests (`HotLane._key_start`)
_KeyStart = tuple[TargetKeys, str] | Literal[False]


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
        self._sightings: OrderedDict[int, None] = OrderedDict()
        #: the services by the hosts they serve (the engine's), for keys computed here
        self.hosts: Mapping[str, Service] = {}
        #: hits answered here from an entry read from disk (`prepared_hit(disk=True)`)
        self.disk_hits = 0
        memory = getattr(store, "memory", None)
        self._memory = memory if isinstance(memory, MemoryTier) else None
        #: the store's ready answers (`DiskStore.ready_answer`), if it keeps them
        self._ready: Callable[[str, int], ReadyRecord | None] | None = getattr(
            store, "ready_answer", None
        )
        self._identity_ok: dict[str, bool] = {}
        self._codings_of: dict[tuple[str | None, bytes], str] = {}
        #: Host field → its service's keying of targets and the start of its keys
        #: ("service host"), or False for a host not served: computed per field
        #: (`_key_start`), not per request; made again when `hosts` is replaced
        self._key_starts: dict[str | None, _KeyStart] = {}
        self._keys_for: Mapping[str, Service] = self.hosts
        if isinstance(memory, MemoryTier):
            # a prepared answer holds its entry: it goes when the entry leaves the
            # memory tier, or the lane would keep bodies alive beyond the tier's bound
            memory.on_drop.append(self.forget)

    def remember(self, host: str | None, raw_target: str, key: str) -> None:
        """Where a (Host, raw target) pair leads, for the next request for it: from
        its second sighting on (`ROUTE_SIGHTINGS`), so a stream of one-off URLs
        (uniform hits over a large store, misses) does not fill the table and empty
        it, routes of the hot set with it, every `HOT_PATH_ENTRIES` requests."""
        pair = (host, raw_target)
        if pair not in self._routes:
            sighting = hash(pair)  # not the pair: a sighting keeps no string alive
            seen = self._sightings
            if sighting not in seen:
                seen[sighting] = None
                if len(seen) > ROUTE_SIGHTINGS:
                    seen.popitem(last=False)
                return
            del seen[sighting]
            if len(self._routes) >= HOT_PATH_ENTRIES:
                self._routes.clear()
        self._routes[pair] = _Route(key)

    def forget_routes(self) -> None:
        """Drop every (Host, target) route and key start (the services changed)."""
        self._routes.clear()
        self._key_starts.clear()

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

    def prepared_hit(
        self, request: RequestHead, disk: bool = False
    ) -> tuple[PreparedHit, float, Outcome, str] | None:
        """`answer_at_once` without ready answers: see there."""
        found = self.answer_at_once(request, disk)
        assert found is None or isinstance(found[0], PreparedHit)
        return found  # type: ignore[return-value]

    def answer_at_once(
        self, request: RequestHead, disk: bool = False, ready_tag: int = 0
    ) -> tuple[PreparedHit | ReadyRecord, float, Outcome, str] | None:
        """The hot lane's answer to `request` without writing it: the prepared answer,
        the current age, the Outcome and the Cache-Status value (counted as a hit);
        None when the full path must answer. A front of our own writes the prepared
        head itself (edge.front.protocol).

        `disk`: also answer an object that is not in the memory tier when the store
        can read it without waiting (`ObjectStore.get_now`: a small body read on
        the event loop), its key computed here when no route is known. Only for a
        plain GET that no traffic rule acts on (the key is then the service's own,
        as `Engine._cacheable` computes it), from a front that writes the answer
        at once: what is prepared from an entry the memory tier does not hold is
        used for this answer only, never kept.

        `ready_tag` (with `disk`): an object the memory tier does not hold is answered
        from its ready answer made by that maker (`edge.store.ready`; the HTTP/1.1
        front's head) when the store has one, before the index is read.
        """
        headers = request.headers
        host_field = headers.get(_HOST)
        target = request.target
        route = self._routes.get((host_field, target))
        from_disk = False
        if route is not None:
            key = route.key
            entry = self.store.peek(key)
            if entry is None and not disk:
                return None
        elif disk:
            # the key as `Engine._cacheable` computes it for a request no traffic rule
            # acts on, from what is remembered per Host field (`_key_start`)
            if self._keys_for is not self.hosts:
                self._keys_for = self.hosts  # the services changed
                self._key_starts.clear()
            start = self._key_starts.get(host_field)
            if start is None:
                start = self._key_start(request, host_field)
            if start is False or target[:1] != "/":
                return None  # not served, or absolute-form (its authority names the host)
            key = start[1] + start[0](target)
            entry = self.store.peek(key)
            if entry is not None:
                self.remember(host_field, target, key)
        else:
            return None
        if entry is None:
            # not in the memory tier: its ready answer, else the index (`disk` is set)
            if ready_tag and self._ready is not None:
                ready = self._ready(key, ready_tag)
                if ready is not None:
                    return self._ready_hit(ready, headers)
            entry = self._from_disk(key, headers)
            if entry is None:
                return None
            from_disk = True
        meta = entry.meta
        if type(meta) is not ObjectMeta or meta.no_cache:
            return None
        if not from_disk and not transitions.may_use_hot_lane(headers):
            return None
        now = self.clock()
        age, ttl = transitions.freshness(meta, now)
        if ttl <= 0:
            return None
        if self.rules.version and purge_verdict(self.rules, meta, now) is not PurgeVerdict.NONE:
            return None
        by_coding = self._prepared.get(key)
        prepared = by_coding.get(headers.get(_ACCEPT_ENCODING)) if by_coding else None
        if prepared is None or prepared.entry is not entry:
            # an entry the memory tier does not hold (read from disk, not admitted) is
            # prepared for this answer alone: kept, it would outlive the tier's bound
            keep = self._memory is None or self._memory.holds(entry)
            prepared = self._prepare(key, entry, meta, headers.get(_ACCEPT_ENCODING), keep)
            if prepared is None:
                return None
        if from_disk:
            self.disk_hits += 1
            self.metrics.disk_hits.inc()
        outcome = fresh_hit(int(ttl))
        self.metrics.hits.inc()
        self.metrics.bytes_sent.inc(prepared.size)
        return prepared, age, outcome, prepared.status_prefix + outcome.member()

    def _ready_hit(
        self, ready: ReadyRecord, headers: CIMultiDictProxy[str] | CIMultiDict[str]
    ) -> tuple[ReadyRecord, float, Outcome, str] | None:
        """A ready answer's hit, decided as a prepared one is (fresh, not purged, a
        request the lane answers), or None for the full path."""
        if not transitions.may_use_hot_lane(headers):
            return None
        accept = headers.get(_ACCEPT_ENCODING)
        if ready.codings:
            # an answer per coding: the one this request takes
            coded = coded_answer(ready, self._coding_of(accept, ready))
            if coded is None:
                return None
            ready = coded
        elif accept is not None and not self._takes_identity(accept):
            return None
        now = self.clock()
        # `ready.age(now)`, written out: this runs on every disk hit
        elapsed = now - ready.response_time
        age = ready.corrected_initial_age + (elapsed if elapsed > 0.0 else 0.0)
        ttl = ready.freshness_lifetime - age
        if ttl <= 0:
            return None
        if self.rules.version:
            if ready.stored_at < now - MAX_RULE_AGE:
                return None  # as `purge_verdict`: validated, not served
            service, host, target, keys = ready.purge_fields()
            if self.rules.verdict(service, host, target, keys, ready.stored_at) is not (
                PurgeVerdict.NONE
            ):
                return None
        self.disk_hits += 1
        self.metrics.disk_hits.inc()
        outcome = fresh_hit(int(ttl))
        self.metrics.hits.inc()
        self.metrics.bytes_sent.inc(ready.body_length)
        return ready, age, outcome, ready.status_prefix + outcome.member()

    def _coding_of(self, accept_encoding: str | None, ready: ReadyRecord) -> str:
        """The coding of `ready`'s answers a request with this Accept-Encoding gets (as
        `choose_encoding` decides; "" for none), remembered per value and set of
        codings."""
        table = self._codings_of
        # the codings' numbers alone (the table's every entry starts with one): the
        # same few sets for every object
        key = (accept_encoding, ready.codings[::CODED_SIZE])
        known = table.get(key)
        if known is None:
            if len(table) >= ACCEPT_ENCODINGS:
                table.clear()
            known = choose_encoding(accept_encoding, ready.coding_names()) or ""
            table[key] = known
        return known

    def _takes_identity(self, accept_encoding: str) -> bool:
        """Whether a request with this Accept-Encoding gets identity when it is the
        only coding stored (as `choose_encoding` decides), remembered per value."""
        known = self._identity_ok.get(accept_encoding)
        if known is None:
            if len(self._identity_ok) >= ACCEPT_ENCODINGS:
                self._identity_ok.clear()
            known = choose_encoding(accept_encoding, ("identity",)) == "identity"
            self._identity_ok[accept_encoding] = known
        return known

    def answer_fields(
        self, meta: ObjectMeta, codings: Collection[str], encoding: str
    ) -> tuple[CIMultiDict[str], str]:
        """The fields of a stored object's answer in `encoding` less Age and
        Cache-Status, and the Cache-Status value before this hit's own member: what
        a prepared or a ready answer is made of."""
        headers = self._responder.response_headers(meta, 0, Outcome(), False, codings=codings)
        del headers["Age"]
        del headers["Cache-Status"]
        if encoding != "identity":
            headers["Content-Encoding"] = encoding
        if meta.status == 200:
            headers["Accept-Ranges"] = "bytes"
        own = f"{self._node_name}; "
        prefix = f"{meta.upstream_cache_status}, {own}" if meta.upstream_cache_status else own
        return headers, prefix

    def _key_start(self, request: RequestHead, field: str | None) -> _KeyStart:
        """What keys a request with the Host `field` (as read already): the target's
        keying under its service's policy and the key's start ("service host"), or
        False for a host not served; remembered per field (bounded: the field is the
        client's)."""
        if len(self._key_starts) >= HOST_FIELDS:
            self._key_starts.clear()
        host = request_host(request)
        found = self.hosts.get(host)
        start: _KeyStart = False
        if found is not None:
            policy = found.cache_key
            keyed = TargetKeys(policy.sort_query, policy.drop_params)
            start = (keyed, primary_key(found.name, host, ""))
        self._key_starts[field] = start
        return start

    def _from_disk(
        self, key: str, headers: CIMultiDictProxy[str] | CIMultiDict[str]
    ) -> StoredEntry | None:
        """The entry of `key` if the store has it at hand now (`get_now`), for a
        request the lane may answer at all (checked first: the full path would
        read it again)."""
        if not transitions.may_use_hot_lane(headers):
            return None
        found = self.store.get_now(key)
        return found if isinstance(found, StoredEntry) else None

    def _prepare(
        self,
        key: str,
        entry: StoredEntry,
        meta: ObjectMeta,
        accept_encoding: str | None,
        keep: bool = True,
    ) -> PreparedHit | None:
        """Headers and body of a hot hit, computed once per entry and Accept-Encoding
        (and kept only with `keep`)."""
        if entry.key in self._responder.compressing:
            # its variants are on their way: the answer's Vary is not settled yet
            return None
        encoding = choose_encoding(accept_encoding, entry.bodies.keys())
        if encoding is None:
            return None
        body = entry.bodies.get(encoding)
        if body is None or body.data is None:
            return None
        headers, prefix = self.answer_fields(meta, entry.bodies.keys(), encoding)
        prepared = PreparedHit(entry, headers, body.data, body.size, prefix, meta.status)
        if not keep:
            return prepared
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
