"""Revalidating a stale response (RFC 9111 4.3): validators sent, a 304 freshens the
stored response and updates its header fields (4.3.4)."""

from __future__ import annotations

from tests.support.engine_harness import running_cache


async def test_a_stale_response_is_revalidated_with_its_etag_and_freshened_by_304() -> None:
    async with running_cache() as cache:
        route = cache.origin.responds(
            "/r", cache_control="max-age=10", body=b"same", etag='"e1"', X_Version="1"
        )
        await cache.get("/r")
        cache.clock.advance(11)
        # the origin's 304 carries new header fields, which replace the stored ones
        route.headers.update({"Cache-Control": "max-age=100", "X-Version": "2"})
        reply = await cache.get("/r")
        reply.assert_status(200).assert_body(b"same").assert_says("fwd=stale", "fwd-status=304")
        assert reply.headers["X-Version"] == "2"
        assert cache.origin.last_headers("/r")["If-None-Match"] == '"e1"'
        cache.clock.advance(90)
        hit = (await cache.get("/r")).assert_hit(age=90).assert_body(b"same")
        assert hit.headers["X-Version"] == "2"
        assert hit.headers["ETag"] == '"e1"'
        assert cache.origin.count("/r") == 2


async def test_a_stale_response_is_revalidated_with_its_last_modified() -> None:
    async with running_cache() as cache:
        stamp = "Mon, 02 Nov 2026 10:00:00 GMT"
        cache.origin.responds("/lm", cache_control="max-age=10", body=b"x", Last_Modified=stamp)
        await cache.get("/lm")
        cache.clock.advance(11)
        await cache.get("/lm")
        assert cache.origin.last_headers("/lm")["If-Modified-Since"] == stamp


async def test_a_changed_response_replaces_the_stored_one() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/r", cache_control="max-age=10", body=b"v1", etag='"e1"')
        await cache.get("/r")
        cache.clock.advance(11)
        cache.origin.responds("/r", cache_control="max-age=10", body=b"v2", etag='"e2"')
        (await cache.get("/r")).assert_body(b"v2").assert_says("fwd=stale", "stored")
        (await cache.get("/r")).assert_body(b"v2").assert_hit()


async def test_no_cache_responses_are_revalidated_on_every_request() -> None:
    # RFC 9111 5.2.2.4: stored, but never served without validation
    async with running_cache() as cache:
        cache.origin.responds("/nc", cache_control="max-age=600, no-cache", body=b"x", etag='"n"')
        (await cache.get("/nc")).assert_stored()
        (await cache.get("/nc")).assert_body(b"x").assert_says("fwd-status=304")
        assert cache.origin.count("/nc") == 2


async def test_conditional_client_requests_are_answered_from_the_cache() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/c", cache_control="max-age=600", body=b"x", etag='"c1"')
        await cache.get("/c")
        (await cache.get("/c", If_None_Match='"c1"')).assert_status(304).assert_hit()
        (await cache.get("/c", If_None_Match='"other"')).assert_status(200).assert_body(b"x")
        assert cache.origin.count("/c") == 1


async def test_after_a_304_the_age_counts_from_the_revalidation() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/r", cache_control="max-age=10", body=b"x", etag='"e"')
        await cache.get("/r")
        cache.clock.advance(15)
        (await cache.get("/r")).assert_says("fwd-status=304")
        cache.clock.advance(3)
        (await cache.get("/r")).assert_hit(age=3)  # the hot lane
        (await cache.get("/r", Cache_Control="max-age=0")).assert_hit(age=3)  # the full path


async def test_a_304_does_not_change_the_stored_body_or_its_length() -> None:
    # RFC 9111 4.3.4: Content-Length of a 304 is not used to update the stored response
    async with running_cache() as cache:
        route = cache.origin.responds("/r", cache_control="max-age=10", body=b"same", etag='"e"')
        await cache.get("/r")
        cache.clock.advance(11)
        route.headers["Content-Length"] = "0"
        (await cache.get("/r")).assert_body(b"same")
        (await cache.get("/r")).assert_body(b"same").assert_hit()
