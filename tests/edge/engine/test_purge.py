"""Purge rules at lookup: hard (gone) and soft (stale since the purge), by URL, prefix,
surrogate key and service."""

from __future__ import annotations

from tests.support.engine_harness import CacheUnderTest, running_cache

LONG = "max-age=1000"


async def _stored(
    cache: CacheUnderTest, path: str, cache_control: str = LONG, **headers: str
) -> None:
    cache.origin.responds(path, cache_control=cache_control, body=b"old", **headers)
    (await cache.get(path)).assert_stored()
    cache.origin.responds(path, cache_control=cache_control, body=b"new", **headers)
    cache.clock.advance(1)


async def test_a_hard_purge_by_url_makes_the_next_request_a_miss() -> None:
    async with running_cache() as cache:
        await _stored(cache, "/a")
        await _stored(cache, "/b")
        cache.purge(urls=("/a",))
        (await cache.get("/a")).assert_body(b"new").assert_says("fwd=miss", "stored")
        (await cache.get("/a")).assert_body(b"new").assert_hit()
        (await cache.get("/b")).assert_body(b"old").assert_hit()


async def test_a_hard_purge_by_prefix_covers_every_url_under_it() -> None:
    async with running_cache() as cache:
        for path in ("/img/1", "/img/2", "/css/1"):
            await _stored(cache, path)
        cache.purge(prefixes=("/img/",))
        (await cache.get("/img/1")).assert_body(b"new")
        (await cache.get("/img/2")).assert_body(b"new")
        (await cache.get("/css/1")).assert_body(b"old").assert_hit()


async def test_a_hard_purge_by_surrogate_key_covers_the_tagged_objects() -> None:
    async with running_cache() as cache:
        await _stored(cache, "/p1", Surrogate_Key="product-1 shoes")
        await _stored(cache, "/p2", Surrogate_Key="product-2 shoes")
        await _stored(cache, "/p3", Surrogate_Key="product-3 hats")
        cache.purge(tags=("shoes",))
        (await cache.get("/p1")).assert_body(b"new")
        (await cache.get("/p2")).assert_body(b"new")
        (await cache.get("/p3")).assert_body(b"old").assert_hit()


async def test_a_purge_of_the_whole_service_covers_everything_stored_before_it() -> None:
    async with running_cache() as cache:
        await _stored(cache, "/x")
        await _stored(cache, "/y")
        cache.purge(everything=True)
        (await cache.get("/x")).assert_body(b"new")
        (await cache.get("/y")).assert_body(b"new")
        cache.clock.advance(1)
        (await cache.get("/x")).assert_body(b"new").assert_hit()


async def test_objects_stored_after_a_purge_are_not_covered_by_it() -> None:
    async with running_cache() as cache:
        await _stored(cache, "/a")
        cache.purge(urls=("/a",))
        cache.clock.advance(1)
        (await cache.get("/a")).assert_stored()
        cache.clock.advance(1)
        (await cache.get("/a")).assert_hit()
        assert cache.origin.count("/a") == 2


async def test_a_soft_purge_makes_the_object_stale_so_it_is_revalidated() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/s", cache_control=LONG, body=b"same", etag='"s1"')
        await cache.get("/s")
        cache.clock.advance(1)
        cache.purge(urls=("/s",), soft=True)
        (await cache.get("/s")).assert_body(b"same").assert_says("fwd=stale", "fwd-status=304")
        assert cache.origin.last_headers("/s")["If-None-Match"] == '"s1"'


async def test_a_soft_purged_object_may_serve_stale_while_revalidating() -> None:
    async with running_cache() as cache:
        await _stored(cache, "/s", cache_control="max-age=1000, stale-while-revalidate=60")
        cache.purge(urls=("/s",), soft=True)
        (await cache.get("/s")).assert_body(b"old").assert_stale("stale-while-revalidate")
        await cache.background_done()
        (await cache.get("/s")).assert_body(b"new").assert_hit()


async def test_the_stale_while_revalidate_window_of_a_soft_purge_counts_from_the_purge() -> None:
    # stored at t, soft-purged at t+500 with 500 s of freshness left: stale since the
    # purge, so stale-while-revalidate=60 lasts until t+560
    async with running_cache() as cache:
        await _stored(cache, "/w", cache_control="max-age=1000, stale-while-revalidate=60")
        cache.clock.advance(499)
        cache.purge(urls=("/w",), soft=True)
        cache.clock.advance(59)
        release = cache.origin.hold("/w")
        (await cache.get("/w")).assert_body(b"old").assert_stale("stale-while-revalidate")
        release.set()
        await cache.background_done()
        await _soft_purged_again_and_past_the_window(cache)


async def _soft_purged_again_and_past_the_window(cache: CacheUnderTest) -> None:
    cache.clock.advance(1)
    cache.purge(urls=("/w",), soft=True)
    cache.clock.advance(61)
    cache.origin.responds(
        "/w", cache_control="max-age=1000, stale-while-revalidate=60", body=b"newer"
    )
    (await cache.get("/w")).assert_body(b"newer").assert_says("fwd=stale", "stored")


async def test_a_soft_purge_serves_stale_only_within_its_window_from_the_purge() -> None:
    # a busy object is asked for inside the window, a quiet one only after it ends
    swr = "max-age=300, stale-while-revalidate=2"
    async with running_cache() as cache:
        for path in ("/soft/quiet", "/soft/busy"):
            await _stored(cache, path, cache_control=swr)
        cache.purge(urls=("/soft/quiet", "/soft/busy"), soft=True)
        release = cache.origin.hold("/soft/busy")
        inside = await cache.get("/soft/busy")
        inside.assert_body(b"old").assert_stale("stale-while-revalidate")
        release.set()
        cache.clock.advance(2.3)
        later = (await cache.get("/soft/quiet")).assert_body(b"new").assert_says("fwd=stale")
        assert "stale-while-revalidate" not in later.cache_status


async def test_a_hard_purge_leaves_no_stale_copy_for_an_unreachable_origin() -> None:
    async with running_cache(max_stale_when_unreachable=3600) as cache:
        await _stored(cache, "/h", cache_control="max-age=1000, stale-if-error=3600")
        cache.purge(urls=("/h",))
        await cache.origin.stop()
        (await cache.get("/h")).assert_status(502)
