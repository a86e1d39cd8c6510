"""The background sweep that gives back the space of hard-purged objects."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from edge.cache.keys import VARIANT_SEPARATOR
from edge.cache.policy import build_meta
from edge.cache.purge import RECLAIM_KEYS_MAX, PurgeRecord, PurgeRules
from edge.reclaim import reclaim_keys, reclaim_purged_forever, reclaim_purged_once
from edge.store import DiskStore, MemoryStore
from fleet.config import Service
from tests.support.waiting import eventually

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


class CountingStore(DiskStore):
    """A disk store that counts the rows its background readers asked for."""

    rows_read = 0
    pages = 0

    async def metas(self, keys: list[str]) -> list[tuple[str, object]]:
        self.rows_read += len(keys)
        return await super().metas(keys)

    async def keys_page(self, after: int, limit: int) -> tuple[list[str], int]:
        self.pages += 1
        return await super().keys_page(after, limit)


def test_the_rules_say_what_a_sweep_must_read() -> None:
    """Hard rules by URL name their keys; soft rules nothing; hard rules by prefix,
    tag or everything, too many keys, or rules from before the tracking: a scan."""
    rules = PurgeRules([SERVICE])
    rules.apply(purge(1, urls=("/before",)), applied_at=STORED_AT + 1)
    rules.track_reclaim()
    assert rules.take_reclaim() == (True, [])  # what came before is unknown
    assert rules.take_reclaim() == (False, [])
    rules.apply(purge(2, urls=("/a", "https://www.example.com/b?x=1")), applied_at=STORED_AT)
    rules.apply(purge(3, urls=("/soft",), soft=True), applied_at=STORED_AT)
    rules.invalidate("site", "www.example.com:443", "/posted", STORED_AT)
    assert rules.take_reclaim() == (
        False,
        sorted(
            [
                "site www.example.com/a",
                "site www.example.com/b?x=1",
                "site www.example.com/posted",
            ]
        ),
    )
    rules.apply(purge(4, tags=("red",)), applied_at=STORED_AT)
    rules.apply(purge(5, urls=("/c",)), applied_at=STORED_AT)
    assert rules.take_reclaim() == (True, [])
    many = tuple(f"/n{n}" for n in range(RECLAIM_KEYS_MAX + 1))
    rules.apply(purge(6, urls=many), applied_at=STORED_AT)
    assert rules.take_reclaim() == (True, [])
    untracked = PurgeRules([SERVICE])
    untracked.apply(purge(1, urls=("/a",)), applied_at=STORED_AT)
    assert untracked._reclaim_keys == set()  # a worker without a sweep keeps nothing


async def test_a_url_purge_reads_only_its_objects_rows(tmp_path: Path) -> None:
    """Over a store of 600 objects, a hard purge of one URL reads its row and its
    variant's, deletes both, and reads no page of the whole store."""
    store = await CountingStore.open(str(tmp_path), 1 << 30)
    assert isinstance(store, CountingStore)
    try:
        for n in range(600):
            await store_object(store, f"/o{n}")
        purged = await store_object(store, "/a")
        variant = f"{purged}{VARIANT_SEPARATOR}gzip"
        writer = store.begin(variant)
        await writer.write(b"variant")
        entry = await store.get(purged)
        assert entry is not None
        await writer.commit(entry.meta)
        lookalike = await store_object(store, "/a2")  # shares the key's start
        rules = PurgeRules([SERVICE])
        rules.track_reclaim()
        rules.apply(purge(1, urls=("/a",)), applied_at=STORED_AT + 1)
        scan, bases = rules.take_reclaim()
        assert not scan and bases == [purged]
        assert await reclaim_keys(store, rules, bases) == 2
        assert await store.get(purged) is None and await store.get(variant) is None
        assert await store.get(lookalike) is not None
        assert store.rows_read == 2 and store.pages == 0
    finally:
        await store.close()


async def test_the_sweep_follows_the_rules_as_they_come(tmp_path: Path) -> None:
    """The running sweep deletes a URL purge's object by its key, and a tag purge's
    by a paced scan of the whole store."""
    store = await CountingStore.open(str(tmp_path), 1 << 30)
    assert isinstance(store, CountingStore)
    rules = PurgeRules([SERVICE])
    sweep = asyncio.create_task(reclaim_purged_forever(store, rules, interval=0.05))
    try:
        by_url = await store_object(store, "/u")
        by_tag = await store_object(store, "/t", tags="blue")
        kept = await store_object(store, "/k")
        await eventually(lambda: rules._tracking, "the sweep to start", 10)
        rules.apply(purge(1, urls=("/u",)), applied_at=STORED_AT + 1)

        async def gone(key: str) -> bool:
            return await store.get(key) is None

        await eventually(lambda: gone(by_url), "the URL's object to go", 10)
        assert store.pages == 0
        rules.apply(purge(2, tags=("blue",)), applied_at=STORED_AT + 1)
        await eventually(lambda: gone(by_tag), "the tagged object to go", 10)
        assert store.pages >= 1
        assert await store.get(kept) is not None
    finally:
        sweep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweep
        await store.close()


async def test_the_memory_store_finds_keys_and_their_variants() -> None:
    store = MemoryStore(1 << 20)
    for key in ("s h/a", f"s h/a{VARIANT_SEPARATOR}gzip", "s h/a2", "s h/b"):
        writer = store.begin(key)
        await writer.write(b"x")
        await writer.commit(object())
    found = await store.keys_of(["s h/a"], VARIANT_SEPARATOR, 10)
    assert sorted(found) == ["s h/a", f"s h/a{VARIANT_SEPARATOR}gzip"]
    assert len(await store.keys_of(["s h/a", "s h/b"], VARIANT_SEPARATOR, 2)) == 2
