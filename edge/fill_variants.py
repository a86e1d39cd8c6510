"""What a fill stores beside its body: the URL's Vary index, and the br/gzip variants
made once the body is committed.

Split from `edge.filling` (which re-exports `variant_key` and `drop_undecodable`):
the fill task decides and streams; these functions carry out the store work around
it, each a few awaits on the `ObjectStore` seam.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy

from edge.cache.keys import VARIANT_SEPARATOR, secondary_key
from edge.cache.model import VaryIndex
from edge.compress import DecodeLimit, make_variants
from edge.metrics import NodeMetrics
from edge.store import BodyRef, ObjectStore

log = logging.getLogger("edgeshield.engine")

__all__ = ["drop_undecodable", "index_variant", "make_coded_variants", "variant_key"]


def variant_key(
    key: str, fields: tuple[str, ...], request_headers: CIMultiDictProxy[str] | CIMultiDict[str]
) -> str:
    """The key of the variant of `key` that a request with `request_headers` selects."""
    return f"{key}{VARIANT_SEPARATOR}{secondary_key(fields, request_headers)}"


async def index_variant(
    store: ObjectStore,
    base_key: str,
    fields: tuple[str, ...],
    variant: str,
    now: float,
    max_variants: int,
) -> None:
    """Record a URL's variant in its Vary index, evicting the oldest beyond the cap."""
    current = store.peek(base_key) or await store.get(base_key)
    variants: tuple[str, ...] = ()
    if current is not None and isinstance(current.meta, VaryIndex):
        if current.meta.fields == fields:
            variants = current.meta.variants
        else:
            # the origin changed what it varies on: the old variants are unreachable
            for old in current.meta.variants:
                await store.delete(old)
    if variant in variants:
        return
    variants = (*variants, variant)
    while len(variants) > max_variants:
        await store.delete(variants[0])
        variants = variants[1:]
    await store.put_meta(base_key, VaryIndex(fields, now, variants))


async def make_coded_variants(
    store: ObjectStore,
    metrics: NodeMetrics,
    key: str,
    source: BodyRef | None,
    content_type: str | None,
    limit: int,
    on_refused: Callable[[str], None] | None = None,
) -> None:
    """Make the br and gzip variants of a committed body (after its readers are
    answered); a body that decodes past `limit` is dropped (and `on_refused` told),
    any other failure logged."""
    try:
        if source is not None:
            await make_variants(store, key, source, content_type, max_decoded=limit)
    except DecodeLimit as exc:
        await drop_undecodable(store, metrics, key, exc, on_refused)
    except Exception:
        log.exception("compressing %s failed", key)


async def drop_undecodable(
    store: ObjectStore,
    metrics: NodeMetrics,
    key: str,
    exc: DecodeLimit,
    on_refused: Callable[[str], None] | None = None,
) -> None:
    """A stored coded body decodes past the object size limit (a decompression
    bomb): it is not kept, as a body over the limit is never stored; `on_refused`
    is told the key (edge/refusals.py: the next requests are not fetched again)."""
    log.warning("dropping %s: %s", key, exc)
    if on_refused is not None:
        on_refused(key)
    await store.delete(key)
    metrics.decode_refused.inc()
