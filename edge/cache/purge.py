"""Purge rules, applied at lookup: which stored objects a purge made stale or gone.

A purge is never a scan of the store. Each accepted purge becomes a rule with the
node-local time it was applied; a lookup asks `PurgeRules.verdict()` whether any rule
applied after the object's upstream request started covers the object. The cost of a
verdict is a few dictionary lookups, whatever the number of cached objects and rules,
so purging everything of a service costs the same as purging one URL.

Times are arguments (`applied_at`, `stored_at`, `now`); nothing here reads a clock.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from edge.cache.keys import normalize_target, primary_key
from fleet.config import Service
from runtime.purge_wire import PurgeRecord

__all__ = ["PurgeRecord", "PurgeRules", "PurgeVerdict", "RulesObserver", "purge_target"]

_NEVER = -math.inf
# The host key of a rule given as a path: it covers that path on every host.
_ANY_HOST = ""
K = TypeVar("K")


#: How long a node keeps an applied rule. The engine validates any object stored
#: longer ago than this before serving it, so dropping older rules unpurges nothing.
MAX_RULE_AGE = 366 * 86400.0

#: Invalidations (RFC 9111 4.4, after an unsafe method) a node keeps per service; the
#: oldest goes first. Any client can cause one, so they are bounded apart from the
#: API's purges. An invalidated object is also deleted from the store, so a dropped
#: invalidation only stops covering fills that were in flight when it was made.
MAX_INVALIDATIONS = 10_000


class RulesObserver(Protocol):
    """Told of every change to a `PurgeRules`, just after it is made.

    The rules stay pure: an observer carries changes elsewhere (worker 0 relays them
    to a node's other worker processes; another worker sends its invalidations up to
    worker 0; see edge.workers). The calls are synchronous and must not block;
    `settled()` waits until every change told so far has arrived where it goes.
    """

    def applied(self, record: PurgeRecord, applied_at: float, *, local: bool) -> None:
        """A purge was applied (`local`: a rule outside the API's log)."""

    def invalidated(self, service: str, host: str, target: str, applied_at: float) -> None:
        """An unsafe request invalidated `host` + `target` (host lowercase, no port)."""

    def expired(self, now: float, max_lifetime: float) -> None:
        """Rules applied more than `max_lifetime` before `now` were dropped."""

    async def settled(self) -> None:
        """Return once every change told so far has been carried where it goes."""


class PurgeVerdict(enum.Enum):
    """What the purge rules say about one stored object."""

    NONE = 0  # no rule applied after the object was fetched covers it
    STALE = 1  # a soft purge covers it: revalidate (stale-while-revalidate may serve)
    GONE = 2  # a hard purge covers it: a miss


def purge_target(service: Service, item: str) -> tuple[str, str]:
    """(host, normalized target) of a purge URL or prefix as given for `service`.

    An absolute URL ("https://host/a?x") names one host (scheme ignored); a path
    ("/a?x") names that path on every host, shown by host "". The path and query are
    normalized the way the cache key is, so the rule meets the key it purges.
    ValueError when an absolute URL's host is not one of the service's.
    """
    if item.startswith("/"):
        host = _ANY_HOST
        target = item.split("#", 1)[0]
    else:
        parts = urlsplit(item)
        host = (parts.hostname or "").lower()
        if host not in service.hosts:
            raise ValueError(f"{item!r}: host {host!r} is not a host of service {service.name!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    policy = service.cache_key
    return host, normalize_target(target, policy.sort_query, policy.drop_params)


def url_keys(service: Service, urls: Sequence[str]) -> list[str]:
    """The primary keys the purge URLs of `service` name: one for a URL with a host,
    one per host of the service for a path (a URL the service does not serve names
    none)."""
    keys: list[str] = []
    for url in urls:
        try:
            host, target = purge_target(service, url)
        except ValueError:
            continue
        for each in (host,) if host else service.hosts:
            keys.append(primary_key(service.name, each, target))
    return keys


#: primary keys the reclaim sweep is told of (`PurgeRules.take_reclaim`) before it is
#: told to scan the whole store instead
RECLAIM_KEYS_MAX = 10_000


class _Times:
    """When the latest hard and the latest soft rule for one key were applied."""

    __slots__ = ("hard", "soft")

    def __init__(self) -> None:
        self.hard = _NEVER
        self.soft = _NEVER

    def add(self, applied_at: float, soft: bool) -> None:
        if soft:
            self.soft = max(self.soft, applied_at)
        else:
            self.hard = max(self.hard, applied_at)

    def latest(self) -> float:
        return max(self.hard, self.soft)

    def drop_before(self, cutoff: float) -> bool:
        """Forget times before `cutoff`; True when nothing is left."""
        if self.hard < cutoff:
            self.hard = _NEVER
        if self.soft < cutoff:
            self.soft = _NEVER
        return self.hard == _NEVER and self.soft == _NEVER


class _ServiceRules:
    """The active rules of one service, indexed for constant-time lookup."""

    __slots__ = (
        "all",
        "invalidated",
        "latest",
        "latest_invalidation",
        "prefix_lengths",
        "prefixes",
        "service",
        "tags",
        "urls",
    )

    def __init__(self, service: Service) -> None:
        self.service = service
        self.all = _Times()
        # (host or "", normalized target) -> times
        self.urls: dict[tuple[str, str], _Times] = {}
        # host or "" -> {normalized prefix -> times}
        self.prefixes: dict[str, dict[str, _Times]] = {}
        # the distinct prefix lengths in use, ascending: a lookup slices the target
        # once per length instead of walking every prefix rule
        self.prefix_lengths: tuple[int, ...] = ()
        self.tags: dict[str, _Times] = {}
        # the latest applied_at of any rule: objects fetched after it skip the lookups
        self.latest = _NEVER
        # (host, normalized target) -> when an unsafe request invalidated it, oldest first
        self.invalidated: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.latest_invalidation = _NEVER

    def invalidate(self, host: str, target: str, applied_at: float) -> None:
        key = (host, target)
        self.invalidated.pop(key, None)
        self.invalidated[key] = applied_at
        while len(self.invalidated) > MAX_INVALIDATIONS:
            self.invalidated.popitem(last=False)
        self.latest_invalidation = max(self.latest_invalidation, applied_at)

    def add(self, record: PurgeRecord, applied_at: float) -> None:
        soft = record.soft
        if record.all:
            self.all.add(applied_at, soft)
        for url in record.urls:
            try:
                key = purge_target(self.service, url)
            except ValueError:
                continue  # the API refuses these; a stray one purges nothing
            self.urls.setdefault(key, _Times()).add(applied_at, soft)
        lengths = set(self.prefix_lengths)
        for prefix in record.prefixes:
            try:
                host, target = purge_target(self.service, prefix)
            except ValueError:
                continue
            self.prefixes.setdefault(host, {}).setdefault(target, _Times()).add(applied_at, soft)
            lengths.add(len(target))
        self.prefix_lengths = tuple(sorted(lengths))
        for tag in record.tags:
            self.tags.setdefault(tag, _Times()).add(applied_at, soft)
        self.latest = max(self.latest, applied_at)

    def expire(self, cutoff: float) -> int:
        dropped = 0
        if self.all.latest() != _NEVER and self.all.drop_before(cutoff):
            dropped += 1
        dropped += _expire_table(self.urls, cutoff) + _expire_table(self.tags, cutoff)
        for table in self.prefixes.values():
            dropped += _expire_table(table, cutoff)
        for host in [h for h, table in self.prefixes.items() if not table]:
            del self.prefixes[host]
        self.prefix_lengths = tuple(
            sorted({len(prefix) for table in self.prefixes.values() for prefix in table})
        )
        if self.latest < cutoff:
            self.latest = _NEVER
        old = [key for key, at in self.invalidated.items() if at < cutoff]
        for key in old:
            del self.invalidated[key]
        if not self.invalidated:
            self.latest_invalidation = _NEVER
        return dropped + len(old)


def _expire_table(table: dict[K, _Times], cutoff: float) -> int:
    """Remove the keys of `table` whose every time is before `cutoff`; how many."""
    gone = [key for key, times in table.items() if times.drop_before(cutoff)]
    for key in gone:
        del table[key]
    return len(gone)


class PurgeRules:
    """Every active purge rule of a node, and the verdict for a stored object.

    `version` increases on every change, so a caller may cache a verdict per object
    and ask again only when the version moved. `applied_seq` is the highest sequence
    number applied with none missing below it. `observer`, when set, is told of every
    change after it is made (see `RulesObserver`).
    """

    def __init__(self, services: Sequence[Service]) -> None:
        self._services = {service.name: _ServiceRules(service) for service in services}
        self.version = 0
        self.applied_seq = 0
        self._applied_above: set[int] = set()  # applied seqs beyond a gap
        self.observer: RulesObserver | None = None
        #: what the reclaim sweep has not looked at yet, kept once one asks for it
        #: (`track_reclaim`): the primary keys hard rules by URL and invalidations
        #: named, or that the whole store must be scanned (a hard rule by prefix,
        #: tag or everything; too many keys; rules from before the tracking began)
        self._tracking = False
        self._reclaim_keys: set[str] = set()
        self._reclaim_scan = False

    def serve(self, services: Sequence[Service]) -> None:
        """Take the services of a reloaded fleet file: new ones get (empty) rules,
        changed ones their new settings; rules of services gone are kept until they
        expire, so a service put back is still purged."""
        for service in services:
            rules = self._services.get(service.name)
            if rules is None:
                self._services[service.name] = _ServiceRules(service)
            else:
                rules.service = service

    def apply(self, record: PurgeRecord, applied_at: float) -> None:
        """Apply one purge as of node-local time `applied_at`; a seq seen before is a no-op."""
        if record.seq <= self.applied_seq or record.seq in self._applied_above:
            return
        self._add(record, applied_at)
        self._applied_above.add(record.seq)
        while self.applied_seq + 1 in self._applied_above:
            self.applied_seq += 1
            self._applied_above.discard(self.applied_seq)
        if self.observer is not None:
            self.observer.applied(record, applied_at, local=False)

    def apply_local(self, record: PurgeRecord, applied_at: float) -> None:
        """Apply a rule that is not in the API's log (its seq is ignored).

        Used for a node's own "everything is stale" rule when it starts without being
        able to reach the API, and to restore rules that were applied before a restart.
        """
        self._add(record, applied_at)
        if self.observer is not None:
            self.observer.applied(record, applied_at, local=True)

    def _add(self, record: PurgeRecord, applied_at: float) -> None:
        rules = self._services.get(record.service)
        if rules is not None:
            rules.add(record, applied_at)
            if self._tracking and not record.soft:
                if record.all or record.prefixes or record.tags:
                    self._reclaim_scan = True
                else:
                    self._to_reclaim(url_keys(rules.service, record.urls))
        self.version += 1

    def track_reclaim(self) -> None:
        """Keep what the reclaim sweep must look at from now on (`take_reclaim`);
        whatever was applied before is for a scan of the whole store."""
        self._tracking = True
        self._reclaim_scan = self._reclaim_scan or self.version > 0

    def take_reclaim(self) -> tuple[bool, list[str]]:
        """What changed since the last call: whether the whole store must be scanned,
        else the primary keys whose objects (and variants) rules may have made
        GONE. Both forgotten here."""
        scan, keys = self._reclaim_scan, sorted(self._reclaim_keys)
        self._reclaim_scan = False
        self._reclaim_keys = set()
        return scan, [] if scan else keys

    def _to_reclaim(self, keys: Sequence[str]) -> None:
        if self._reclaim_scan:
            return
        self._reclaim_keys.update(keys)
        if len(self._reclaim_keys) > RECLAIM_KEYS_MAX:
            self._reclaim_scan = True  # bounded: a scan finds them all the same
            self._reclaim_keys = set()

    def invalidate(self, service: str, host: str, target: str, applied_at: float) -> None:
        """RFC 9111 4.4: an unsafe request to `host` + `target` (normalized) succeeded.

        Every stored response for that URI (all its variants) fetched before
        `applied_at` is gone, in this process, whoever stored it, and so is what a
        fill in flight since before then brings (`invalidated_since`). Not part of the
        API's log and not persisted: an invalidation is this node's own business. The
        observer carries it to the node's other worker processes.
        """
        rules = self._services.get(service)
        if rules is None:
            return
        host = _strip_port(host.lower())
        rules.invalidate(host, target, applied_at)
        if self._tracking:
            self._to_reclaim((primary_key(service, host, target),))
        self.version += 1
        if self.observer is not None:
            self.observer.invalidated(service, host, target, applied_at)

    async def invalidate_everywhere(
        self, service: str, host: str, target: str, applied_at: float
    ) -> None:
        """`invalidate`, then wait until every process of the node has it (`settled`),
        so an answer sent after this cannot be followed by a hit of the old object in
        another worker process."""
        self.invalidate(service, host, target, applied_at)
        await self.settled()

    async def settled(self) -> None:
        """Return once the observer has carried every change so far where it goes (at
        once without an observer)."""
        if self.observer is not None:
            await self.observer.settled()

    def invalidated_since(self, service: str, host: str, target: str, moment: float) -> bool:
        """Whether `host` + `target` was invalidated after `moment` (a fill's start)."""
        rules = self._services.get(service)
        if rules is None or rules.latest_invalidation <= moment:
            return False
        applied = rules.invalidated.get((_strip_port(host.lower()), target))
        return applied is not None and applied > moment

    def changed_since(self, service: str, moment: float) -> bool:
        """Whether a rule of `service` was applied after `moment` (node-local time).

        A fill that started before such a rule may carry what the rule purged, so
        no request that arrives after the rule may join it.
        """
        rules = self._services.get(service)
        return rules is not None and rules.latest > moment

    def verdict(
        self,
        service: str,
        host: str,
        target: str,
        surrogate_keys: tuple[str, ...],
        stored_at: float,
    ) -> PurgeVerdict:
        """GONE if a hard rule applied after `stored_at` covers the object, else STALE
        if a soft one does, else NONE.

        `host` is the request's host (lowercase; a port is ignored), `target` the
        normalized origin-form target of the cache key (all its variants share it),
        `surrogate_keys` what the origin sent in Surrogate-Key, and `stored_at` the
        node-local time the object's upstream request started. A rule applied at the
        very instant the fetch started does not cover it (strictly later only), so a
        frozen test clock does not purge the refill that follows a purge.
        """
        hard, soft = self._covering(service, host, target, surrogate_keys, stored_at)
        if hard > stored_at:
            return PurgeVerdict.GONE
        if soft > stored_at:
            return PurgeVerdict.STALE
        return PurgeVerdict.NONE

    def soft_purged_at(
        self,
        service: str,
        host: str,
        target: str,
        surrogate_keys: tuple[str, ...],
        stored_at: float,
    ) -> float | None:
        """When the latest soft rule covering the object was applied (node-local
        time), if one was applied after `stored_at`: the object is stale since then,
        so stale-while-revalidate counts from it. Arguments as for `verdict`."""
        _, soft = self._covering(service, host, target, surrogate_keys, stored_at)
        return soft if soft > stored_at else None

    def _covering(
        self,
        service: str,
        host: str,
        target: str,
        surrogate_keys: tuple[str, ...],
        stored_at: float,
    ) -> tuple[float, float]:
        """(latest hard, latest soft) applied_at of the rules covering the object."""
        rules = self._services.get(service)
        if rules is None or (rules.latest <= stored_at and rules.latest_invalidation <= stored_at):
            return _NEVER, _NEVER
        hard = rules.all.hard
        soft = rules.all.soft
        host = _strip_port(host)
        if rules.invalidated:
            hard = max(hard, rules.invalidated.get((host, target), _NEVER))
        urls = rules.urls
        if urls:
            for key in ((host, target), (_ANY_HOST, target)):
                times = urls.get(key)
                if times is not None:
                    hard = max(hard, times.hard)
                    soft = max(soft, times.soft)
        if surrogate_keys and rules.tags:
            tags = rules.tags
            for tag in surrogate_keys:
                times = tags.get(tag)
                if times is not None:
                    hard = max(hard, times.hard)
                    soft = max(soft, times.soft)
        if rules.prefix_lengths:
            size = len(target)
            for table in (rules.prefixes.get(host), rules.prefixes.get(_ANY_HOST)):
                if not table:
                    continue
                for length in rules.prefix_lengths:
                    if length > size:
                        break
                    times = table.get(target[:length])
                    if times is not None:
                        hard = max(hard, times.hard)
                        soft = max(soft, times.soft)
        return hard, soft

    def expire(self, now: float, max_lifetime: float) -> int:
        """Drop rules applied more than `max_lifetime` before `now`; how many were dropped.

        No object stored before then can still be served, so such a rule can no
        longer change a verdict.
        """
        cutoff = now - max_lifetime
        dropped = sum(rules.expire(cutoff) for rules in self._services.values())
        if dropped:
            self.version += 1
        if self.observer is not None:
            self.observer.expired(now, max_lifetime)
        return dropped

    @property
    def rule_count(self) -> int:
        """How many distinct rule keys are active (for metrics and benchmarks)."""
        total = 0
        for rules in self._services.values():
            total += len(rules.urls) + len(rules.tags)
            total += sum(len(table) for table in rules.prefixes.values())
            total += rules.all.latest() != _NEVER
            total += len(rules.invalidated)
        return total


def _strip_port(host: str) -> str:
    """`host` without a ":port" (an IPv6 literal's brackets kept)."""
    if ":" in host and not host.endswith("]"):
        return host.rsplit(":", 1)[0]
    return host
