"""Serving stale: stale-while-revalidate and stale-if-error (RFC 5861), and a stale
response when the origin cannot be reached (RFC 9111 4.2.4)."""

from __future__ import annotations

import asyncio

from tests.support.engine_harness import running_cache, until

SWR = "max-age=10, stale-while-revalidate=60"


async def test_stale_while_revalidate_serves_stale_and_revalidates_once() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/swr", cache_control=SWR, body=b"old")
        await cache.get("/swr")
        cache.clock.advance(20)
        cache.origin.responds("/swr", cache_control=SWR, body=b"new")
        release = cache.origin.hold("/swr")
        replies = await asyncio.gather(*(cache.get("/swr") for _ in range(10)))
        for reply in replies:
            reply.assert_body(b"old").assert_stale("stale-while-revalidate").assert_says("hit")
        await until(lambda: cache.origin.count("/swr") == 2, "the background revalidation")
        release.set()
        await cache.background_done()
        (await cache.get("/swr")).assert_body(b"new").assert_hit(age=0)
        assert cache.origin.count("/swr") == 2
        assert cache.engine.metrics.background_revalidations.value == 1


async def test_past_the_stale_while_revalidate_window_the_client_waits_for_the_origin() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/swr", cache_control=SWR, body=b"old")
        await cache.get("/swr")
        cache.clock.advance(10 + 61)
        cache.origin.responds("/swr", cache_control=SWR, body=b"new")
        (await cache.get("/swr")).assert_body(b"new").assert_says("fwd=stale", "stored")


async def test_stale_if_error_serves_the_stale_copy_when_the_origin_answers_5xx() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/sie", cache_control="max-age=10, stale-if-error=300", body=b"kept")
        await cache.get("/sie")
        cache.clock.advance(100)
        cache.origin.responds("/sie", 503, body=b"down")
        reply = await cache.get("/sie")
        reply.assert_status(200).assert_body(b"kept").assert_stale("stale-if-error")
        assert cache.engine.metrics.stale_if_error.value == 1


async def test_past_the_stale_if_error_window_the_error_is_passed_on() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/sie", cache_control="max-age=10, stale-if-error=30", body=b"kept")
        await cache.get("/sie")
        cache.clock.advance(10 + 31)
        cache.origin.responds("/sie", 503, body=b"down")
        (await cache.get("/sie")).assert_status(503).assert_says("fwd-status=503")


async def test_stale_if_error_when_the_origin_is_down() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/sie", cache_control="max-age=1, stale-if-error=300", body=b"kept")
        await cache.get("/sie")
        await cache.origin.stop()
        cache.clock.advance(2)
        reply = await cache.get("/sie")
        reply.assert_status(200).assert_body(b"kept").assert_stale("stale-if-error")
        never = await cache.get("/never-cached")
        never.assert_status(502)
        assert b"origin unreachable" in never.body


async def test_a_stale_copy_stands_in_while_the_origin_is_unreachable() -> None:
    # no stale-if-error: RFC 9111 4.2.4 lets a disconnected cache serve stale, here
    # for up to max_stale_when_unreachable seconds
    async with running_cache(max_stale_when_unreachable=3600) as cache:
        cache.origin.responds("/u", cache_control="max-age=10", body=b"kept")
        await cache.get("/u")
        await cache.origin.stop()
        cache.clock.advance(10 + 3000)
        (await cache.get("/u")).assert_body(b"kept").assert_stale("stale-when-unreachable")
        cache.clock.advance(700)
        (await cache.get("/u")).assert_status(502)


async def test_an_origin_5xx_is_not_unreachable() -> None:
    async with running_cache(max_stale_when_unreachable=3600) as cache:
        cache.origin.responds("/u", cache_control="max-age=10", body=b"kept")
        await cache.get("/u")
        cache.clock.advance(20)
        cache.origin.responds("/u", 500, body=b"boom")
        (await cache.get("/u")).assert_status(500)


async def test_no_stale_copy_when_unreachable_with_max_stale_when_unreachable_zero() -> None:
    async with running_cache(max_stale_when_unreachable=0) as cache:
        cache.origin.responds("/u", cache_control="max-age=10", body=b"kept")
        await cache.get("/u")
        await cache.origin.stop()
        cache.clock.advance(11)
        (await cache.get("/u")).assert_status(502)


async def test_must_revalidate_forbids_serving_stale_when_unreachable() -> None:
    async with running_cache(max_stale_when_unreachable=3600) as cache:
        cache.origin.responds("/m", cache_control="max-age=10, must-revalidate", body=b"kept")
        await cache.get("/m")
        await cache.origin.stop()
        cache.clock.advance(11)
        (await cache.get("/m")).assert_status(502)


async def test_must_revalidate_forbids_stale_if_error() -> None:
    # RFC 9111 5.2.2.2: once stale, never used without successful validation
    async with running_cache() as cache:
        cache.origin.responds(
            "/m", cache_control="max-age=10, must-revalidate, stale-if-error=300", body=b"x"
        )
        await cache.get("/m")
        cache.clock.advance(11)
        cache.origin.responds("/m", 503, body=b"down")
        (await cache.get("/m")).assert_status(503)


async def test_a_revalidation_answered_not_storable_replaces_the_stale_copy() -> None:
    # RFC 9111 4.3.3: a full response to a validation request supersedes the stored
    # one, so the stale copy is not served again (before: it was, for the whole
    # stale-while-revalidate window, each stale hit starting another revalidation)
    async with running_cache() as cache:
        cache.origin.responds(
            "/g", cache_control="max-age=10, stale-while-revalidate=60", body=b"x"
        )
        await cache.get("/g")
        cache.clock.advance(11)
        cache.origin.responds("/g", 404, body=b"gone")
        stale = await cache.get("/g")
        assert (stale.status, stale.body) == (200, b"x")
        await cache.background_done()
        assert cache.origin.count("/g") == 2
        after = await cache.get("/g")
        assert (after.status, after.body) == (404, b"gone")
