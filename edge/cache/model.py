"""What the cache keeps about a stored response, as plain frozen values.

`ObjectMeta` is computed once when a response is stored (or updated by a 304), so a
hit only adds and compares numbers: the freshness lifetime, the corrected initial
age and the stale allowances are all precomputed here rather than re-parsed per hit.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import Field, dataclass, fields

HeaderPairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """A stored response: its headers and the numbers its freshness depends on."""

    status: int
    #: every header the upstream sent (for recomputing after a 304), hop-by-hop removed
    upstream_headers: HeaderPairs
    #: the headers a client receives, computed once: targeted cache fields, surrogate
    #: keys, framing and coding fields removed (they are set per response)
    client_headers: HeaderPairs
    #: RFC 9111 4.2.3: corrected_initial_age, and the local time the response arrived
    corrected_initial_age: float
    response_time: float
    #: local time the upstream request started: the object counts as older than any
    #: purge applied after this moment (so a purge racing a fill wins)
    stored_at: float
    freshness_lifetime: float
    stale_while_revalidate: float
    stale_if_error: float
    #: must-revalidate / proxy-revalidate / s-maxage: never served stale (RFC 9111 5.2.2.2)
    must_revalidate: bool
    #: no-cache: validate before every reuse (RFC 9111 5.2.2.4)
    no_cache: bool
    etag: str | None
    last_modified: float | None
    content_type: str | None
    #: the coding the upstream sent the body in ("identity", "gzip", "br")
    upstream_encoding: str
    surrogate_keys: tuple[str, ...]
    #: the Cache-Status entries of the tiers above, as received when stored
    upstream_cache_status: str
    #: the Via the upstream sent
    upstream_via: str
    #: true when the object varies on Accept-Encoding (compressible or origin-declared)
    compressible: bool
    host: str
    target: str
    service: str
    #: RFC 9111 5.2.2.4: fields listed by a qualified no-cache, never sent on a reuse
    #: without validation (left out of `client_headers`; sent after one)
    no_cache_fields: tuple[str, ...] = ()
    #: RFC 9111 3.5: the response may be reused for requests with Authorization
    #: (it said public, s-maxage or must-revalidate)
    authorized_reuse: bool = False

    def age(self, now: float) -> float:
        """RFC 9111 4.2.3 current_age at `now`."""
        return self.corrected_initial_age + max(0.0, now - self.response_time)

    def __getstate__(self) -> tuple[object, ...]:
        """The field values in order, for pickling a stored row: one C-level call,
        where the dataclass default walks `fields()` in Python for every commit (on
        the store's threads, holding the interpreter lock the event loop needs)."""
        return _META_STATE(self)  # type: ignore[no-any-return]

    def __setstate__(self, state: tuple[object, ...]) -> None:
        """Unpickle a stored row; one written before the last fields were added (an
        upgrade) gives them their defaults instead of leaving them unset."""
        specs = _META_FIELDS
        if len(state) == len(specs):
            for setter, value in zip(_META_SETTERS, state, strict=True):
                setter(self, value)
            return
        values = list(state) + [_ABSENT] * (len(specs) - len(state))
        for spec, value in zip(specs, values, strict=False):
            object.__setattr__(self, spec.name, spec.default if value is _ABSENT else value)


#: a field a pickled row does not have
_ABSENT = object()
#: `fields(ObjectMeta)`, looked up once: computing it on every unpickle was a tenth
#: of a disk hit's time on the gateway (docs/benchmarks.md, "Store scale")
_META_FIELDS: tuple[Field[object], ...] = fields(ObjectMeta)
#: each field's slot setter (a frozen dataclass forbids setattr, not its slots)
_META_SETTERS: tuple[Callable[[ObjectMeta, object], None], ...] = tuple(
    getattr(ObjectMeta, spec.name).__set__ for spec in _META_FIELDS
)
#: every field's value in order, in one call (pickling a row)
_META_STATE = operator.attrgetter(*(spec.name for spec in _META_FIELDS))


@dataclass(frozen=True, slots=True)
class VaryIndex:
    """Stored under a URL's primary key when its responses vary on request fields."""

    fields: tuple[str, ...]
    stored_at: float
    #: the variant keys stored, oldest first (capped by the service's max_variants)
    variants: tuple[str, ...] = ()
