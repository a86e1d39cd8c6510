"""What a request asks of the cache: only-if-cached (RFC 9111 5.2.1.7), no-store, and
invalidation by unsafe methods (RFC 9111 4.4)."""

from __future__ import annotations

from tests.support.engine_harness import running_cache


async def test_only_if_cached_with_nothing_stored_is_a_504() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/o", cache_control="max-age=600", body=b"x")
        (await cache.get("/o", Cache_Control="only-if-cached")).assert_status(504)
        assert cache.origin.count("/o") == 0


async def test_only_if_cached_with_a_fresh_copy_is_a_hit() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/o", cache_control="max-age=600", body=b"x")
        await cache.get("/o")
        (await cache.get("/o", Cache_Control="only-if-cached")).assert_body(b"x").assert_hit()


async def test_only_if_cached_with_a_stale_copy_is_a_504() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/o", cache_control="max-age=10", body=b"x")
        await cache.get("/o")
        cache.clock.advance(11)
        (await cache.get("/o", Cache_Control="only-if-cached")).assert_status(504)
        assert cache.origin.count("/o") == 1


async def test_a_request_with_no_store_keeps_the_answer_out_of_the_cache() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/ns", cache_control="max-age=600", body=b"x")
        (await cache.get("/ns", Cache_Control="no-store")).assert_body(b"x")
        (await cache.get("/ns")).assert_stored()


async def test_a_successful_post_invalidates_the_stored_response() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/item", cache_control="max-age=600", body=b"old")
        await cache.get("/item")
        cache.origin.responds("/item", cache_control="max-age=600", body=b"new")
        (await cache.request("POST", "/item")).assert_status(200).assert_says("fwd=request")
        (await cache.get("/item")).assert_body(b"new").assert_says("fwd=")
        assert cache.engine.metrics.invalidations.value == 1


async def test_a_delete_invalidates_the_uri_in_its_location_too() -> None:
    async with running_cache() as cache:
        for path in ("/item", "/list"):
            cache.origin.responds(path, cache_control="max-age=600", body=b"old")
            await cache.get(path)
        cache.origin.responds("/item", cache_control="max-age=600", body=b"new", Location="/list")
        cache.origin.routes["/list"].body = b"new list"
        await cache.request("DELETE", "/item")
        (await cache.get("/list")).assert_body(b"new list")


async def test_a_failed_unsafe_request_invalidates_nothing() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/item", cache_control="max-age=600", body=b"old")
        await cache.get("/item")
        cache.origin.responds("/item", 500, body=b"boom")
        (await cache.request("PUT", "/item")).assert_status(500)
        (await cache.get("/item")).assert_body(b"old").assert_hit()


async def test_a_head_request_is_answered_from_the_stored_get() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/h", cache_control="max-age=600", body=b"twelve bytes")
        await cache.get("/h")
        reply = (await cache.request("HEAD", "/h")).assert_status(200).assert_hit()
        assert reply.headers["Content-Length"] == "12" and reply.body == b""


async def test_a_host_this_cdn_does_not_serve_is_a_421() -> None:
    async with running_cache() as cache:
        (await cache.get("/", Host="elsewhere.example")).assert_status(421)


async def test_a_successful_post_invalidates_every_variant_of_the_uri() -> None:
    async with running_cache() as cache:
        vary = {"cache_control": "max-age=600", "Vary": "Accept-Language"}
        for language in ("en", "fr"):
            cache.origin.responds("/v", body=language.encode(), **vary)
            await cache.get("/v", Accept_Language=language)
        cache.clock.advance(1)
        cache.origin.responds("/v", body=b"new", **vary)
        await cache.request("POST", "/v")
        (await cache.get("/v", Accept_Language="en")).assert_body(b"new")
        (await cache.get("/v", Accept_Language="fr")).assert_body(b"new")


async def test_only_if_cached_for_a_variant_not_stored_is_a_504() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/v", cache_control="max-age=600", body=b"en", Vary="Accept-Language")
        await cache.get("/v", Accept_Language="en")
        reply = await cache.get("/v", Accept_Language="fr", Cache_Control="only-if-cached")
        reply.assert_status(504)
        assert cache.origin.count("/v") == 1


async def test_a_head_on_a_miss_fills_the_cache_for_the_gets_after_it() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/h", cache_control="max-age=600", body=b"twelve bytes")
        reply = (await cache.request("HEAD", "/h")).assert_status(200).assert_stored()
        assert reply.body == b""
        # the HEAD's answer left before the fill committed the body
        await cache.background_done()
        (await cache.get("/h")).assert_body(b"twelve bytes").assert_hit()
        assert cache.origin.seen[-1][0] == "GET"
