"""The background sweep that gives back the space of hard-purged objects."""

from __future__ import annotations

from pathlib import Path

from edge.cache.policy import build_meta
from edge.cache.purge import PurgeRecord, PurgeRules
from edge.reclaim import reclaim_purged_once
from edge.store import DiskStore
from fleet.config import Service

SERVICE = Service(name="site", hosts=("www.example.com",), origins=("http://127.0.0.1:1",))
STORED_AT = 1_000.0


async def store_object(store: DiskStore, target: str, tags: str = "") -> str:
    key = f"site www.example.com{target}"
    pairs = [("Cache-Control", "max-age=60")]
    if tags:
        pairs.append(("Surrogate-Key", tags))
    meta = build_meta(
        status=200,
        upstream_pairs=tuple(pairs),
        request_time=STORED_AT,
        response_time=STORED_AT,
        stored_at=STORED_AT,
        service="site",
        host="www.example.com",
        target=target,
        compressible=False,
    )
    writer = store.begin(key)
    await writer.write(b"x" * 4096)
    await writer.commit(meta)
    return key


def purge(
    seq: int, *, urls: tuple[str, ...] = (), tags: tuple[str, ...] = (), soft: bool = False
) -> PurgeRecord:
    return PurgeRecord(
        seq=seq,
        id=f"p{seq}",
        service="site",
        urls=urls,
        prefixes=(),
        tags=tags,
        all=False,
        soft=soft,
        accepted_at=STORED_AT + 1,
    )


async def test_hard_purged_objects_are_deleted_and_their_space_returned(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path), 64 * 1024 * 1024)
    try:
        gone = await store_object(store, "/a")
        tagged = await store_object(store, "/b", tags="red blue")
        kept = await store_object(store, "/c", tags="green")
        rules = PurgeRules([SERVICE])
        rules.apply(purge(1, urls=("/a",)), applied_at=STORED_AT + 1)
        rules.apply(purge(2, tags=("blue",)), applied_at=STORED_AT + 1)
        before = store.size_bytes
        assert await reclaim_purged_once(store, rules) == 2
        assert await store.get(gone) is None and await store.get(tagged) is None
        assert await store.get(kept) is not None
        assert store.size_bytes == before - 2 * 4096
    finally:
        await store.close()


async def test_soft_purged_objects_stay_for_revalidation(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path), 64 * 1024 * 1024)
    try:
        key = await store_object(store, "/soft")
        rules = PurgeRules([SERVICE])
        rules.apply(purge(1, urls=("/soft",), soft=True), applied_at=STORED_AT + 1)
        assert await reclaim_purged_once(store, rules) == 0
        assert await store.get(key) is not None
    finally:
        await store.close()


async def test_objects_fetched_after_the_purge_are_kept(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path), 64 * 1024 * 1024)
    try:
        key = await store_object(store, "/later")
        rules = PurgeRules([SERVICE])
        rules.apply(purge(1, urls=("/later",)), applied_at=STORED_AT - 1)
        assert await reclaim_purged_once(store, rules) == 0
        assert await store.get(key) is not None
    finally:
        await store.close()
