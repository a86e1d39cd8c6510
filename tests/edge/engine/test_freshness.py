"""Fresh hits and Age (RFC 9111 4.2, 5.1), on the hot lane and the full path alike."""

from __future__ import annotations

from tests.support.engine_harness import running_cache


async def test_a_fresh_response_is_served_from_cache_with_its_age_growing() -> None:
    async with running_cache() as cache:
        cache.origin.responds(
            "/page", cache_control="max-age=300", body=b"v1", Content_Type="text/plain"
        )
        (await cache.get("/page")).assert_status(200).assert_body(b"v1").assert_stored()
        cache.clock.advance(30)
        reply = await cache.get("/page")
        reply.assert_body(b"v1").assert_hit(age=30).assert_says("ttl=270")
        assert "edge1" in reply.headers["Via"]
        assert cache.origin.count("/page") == 1


async def test_the_first_request_for_a_url_is_a_uri_miss() -> None:
    async with running_cache() as cache:
        cache.origin.responds(
            "/page", cache_control="max-age=300", body=b"v1", Content_Type="text/plain"
        )
        (await cache.get("/page")).assert_says("fwd=uri-miss", "stored")


async def test_the_hot_lane_and_the_full_path_give_the_same_answer() -> None:
    # a plain GET of a fresh object takes the hot lane; a request Cache-Control sends
    # the same request down the full path (it does not force a trip upstream)
    async with running_cache() as cache:
        cache.origin.responds(
            "/page", cache_control="max-age=300", body=b"v1", Content_Type="text/plain"
        )
        await cache.get("/page")
        cache.clock.advance(12)
        hot = (await cache.get("/page")).assert_hit(age=12)
        full = (await cache.get("/page", Cache_Control="max-age=0")).assert_hit(age=12)
        assert hot.body == full.body == b"v1"
        assert hot.cache_status == full.cache_status
        for name in ("Content-Type", "Content-Length", "Vary", "Accept-Ranges", "Via"):
            assert hot.headers.get(name) == full.headers.get(name), name
        assert cache.origin.count("/page") == 1


async def test_an_origin_age_counts_against_the_lifetime() -> None:
    # RFC 9111 4.2.3: the Age the origin sent is part of the current age
    async with running_cache() as cache:
        cache.origin.responds(
            "/aged", cache_control="max-age=100", body=b"x", Age="90", Content_Type="text/plain"
        )
        await cache.get("/aged")
        cache.clock.advance(5)
        (await cache.get("/aged")).assert_hit(age=95).assert_says("ttl=5")
        cache.clock.advance(6)
        (await cache.get("/aged")).assert_says("fwd=stale")
        assert cache.origin.count("/aged") == 2


async def test_a_response_that_has_become_stale_is_fetched_again() -> None:
    async with running_cache() as cache:
        cache.origin.responds(
            "/page", cache_control="max-age=60", body=b"v1", Content_Type="text/plain"
        )
        await cache.get("/page")
        cache.clock.advance(61)
        cache.origin.responds(
            "/page", cache_control="max-age=60", body=b"v2", Content_Type="text/plain"
        )
        (await cache.get("/page")).assert_body(b"v2").assert_says("fwd=stale", "stored")
        (await cache.get("/page")).assert_body(b"v2").assert_hit(age=0)
        assert cache.origin.count("/page") == 2


async def test_s_maxage_and_cdn_cache_control_outrank_max_age_for_this_cache() -> None:
    async with running_cache() as cache:
        cache.origin.responds(
            "/cdn",
            cache_control="max-age=10",
            body=b"x",
            CDN_Cache_Control="max-age=600",
            Content_Type="text/plain",
        )
        reply = await cache.get("/cdn")
        # RFC 9213 2: targeted at every CDN, so passed on to one in front of ours
        assert reply.headers["CDN-Cache-Control"] == "max-age=600"
        cache.clock.advance(300)
        (await cache.get("/cdn")).assert_hit(age=300)
        assert cache.origin.count("/cdn") == 1
