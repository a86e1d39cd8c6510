"""Ready answers in tests: a stored object's metadata and heads as the front makes
them, two stores sharing one directory (as two worker processes of a node), and an
edge whose memory tier holds nothing new, so that a hit is a disk hit."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from edge.cache.model import ObjectMeta
from edge.front.h1_hits import maker_tag
from edge.store import DiskStore
from edge.store.ready import ReadyHead, encode_record
from tests.support.disk_lane import DiskEdge, running_disk_edge

__all__ = [
    "FRESH",
    "TAG",
    "encoded",
    "fill_tier",
    "head",
    "meta",
    "put",
    "ready_edge",
    "synced",
    "two_workers",
]

KiB = 1024
FRESH = "max-age=600"
TAG = maker_tag("edge1")


def meta(**changes: object) -> ObjectMeta:
    """A stored response's metadata, fresh for ten minutes from t=1000."""
    base = ObjectMeta(
        status=200,
        upstream_headers=(("Content-Type", "image/png"),),
        client_headers=(("Content-Type", "image/png"),),
        corrected_initial_age=3.0,
        response_time=1000.0,
        stored_at=999.0,
        freshness_lifetime=600.0,
        stale_while_revalidate=0.0,
        stale_if_error=0.0,
        must_revalidate=False,
        no_cache=False,
        etag='"v1"',
        last_modified=None,
        content_type="image/png",
        upstream_encoding="identity",
        surrogate_keys=("k1", "k2"),
        upstream_cache_status="",
        upstream_via="",
        compressible=False,
        host="example.com",
        target="/a",
        service="svc",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def head(tag: int = TAG) -> ReadyHead:
    """A ready head as the front makes one (its bytes are opaque to the store)."""
    return ReadyHead((("identity", b""),), False, "edge1; ", 200, tag)


def encoded(key: str, body: bytes) -> bytes:
    """The record of `key` with `body` (one that fits)."""
    record = encode_record(key, head(), meta(), {"identity": body})
    assert record is not None
    return record


@asynccontextmanager
async def two_workers(
    root: Path, in_memory: bool = False
) -> AsyncIterator[tuple[DiskStore, DiskStore]]:
    """Two stores on one directory, as two worker processes of a node have, both
    making ready answers; their memory tiers hold nothing, as full tiers would not
    hold a new object. `in_memory`: as on a memory filesystem (commits on the loop,
    the ring read through a mapping)."""
    stores = []
    try:
        for _ in range(2):
            store = await DiskStore.open(
                str(root), 1 << 30, memory_bytes=0, commit_inline=in_memory
            )
            store.ready_maker = lambda _meta, _codings, _settled: head()
            stores.append(store)
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await store.close()


async def put(store: DiskStore, key: str, body: bytes, **changes: object) -> None:
    """Store `body` under `key` as a fill does."""
    writer = store.begin(key)
    await writer.write(body)
    await writer.commit(meta(**changes))


async def synced(store: DiskStore, key: str) -> None:
    """Let `store` learn the rows the other store wrote (its periodic sync)."""
    store._synced_at = -1.0
    assert store.get_now("absent-key") is None
    assert key in store._lru


@asynccontextmanager
async def ready_edge(root: Path) -> AsyncIterator[DiskEdge]:
    """An edge whose memory tier holds nothing new (as when it is full)."""
    async with running_disk_edge(root, memory_bytes=64 * KiB) as edge:
        yield edge


def fill_tier(edge: DiskEdge) -> None:
    """Make the memory tier full and forget every key it saw read (as under a long
    tail): a read from disk now is not admitted."""
    edge.store.memory.max_bytes = 0
    edge.store.memory.forget_sightings()
