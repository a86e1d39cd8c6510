"""What is passed on and never stored: not-storable responses (RFC 9111 3), bodies over
the object size limit, and bodies framed by the connection's close (RFC 9112 6.3)."""

from __future__ import annotations

import aiohttp

from tests.support.engine_harness import CloseDelimitedOrigin, running_cache


async def test_a_no_store_response_is_passed_and_not_stored() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/ns", cache_control="no-store", body=b"x")
        (await cache.get("/ns")).assert_body(b"x").assert_not_stored("not-storable")
        (await cache.get("/ns")).assert_body(b"x").assert_not_stored("not-storable")
        assert cache.origin.count("/ns") == 2
        assert cache.stored("/ns") is None


async def test_a_private_response_is_passed_and_not_stored() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/p", cache_control="private, max-age=600", body=b"mine")
        (await cache.get("/p")).assert_body(b"mine").assert_not_stored("not-storable")
        await cache.get("/p")
        assert cache.origin.count("/p") == 2


async def test_an_answer_to_a_request_with_authorization_is_not_stored() -> None:
    # RFC 9111 3.5: unless the response says it may be shared (public, s-maxage, ...)
    async with running_cache() as cache:
        cache.origin.responds("/auth", cache_control="max-age=600", body=b"secret")
        (await cache.get("/auth", Authorization="Bearer t")).assert_body(b"secret")
        (await cache.get("/auth", Authorization="Bearer t")).assert_says("fwd=")
        assert cache.origin.count("/auth") == 2


async def test_a_body_over_the_object_size_limit_is_passed_and_not_stored() -> None:
    async with running_cache(max_object_size=1000) as cache:
        big = b"b" * 5000
        cache.origin.responds("/big", cache_control="max-age=600", body=big)
        (await cache.get("/big")).assert_body(big).assert_not_stored("too-large")
        (await cache.get("/big")).assert_body(big).assert_not_stored("too-large")
        assert cache.origin.count("/big") == 2
        assert cache.engine.metrics.not_stored_too_large.value == 2


async def test_a_close_delimited_body_is_passed_and_not_stored() -> None:
    origin = await CloseDelimitedOrigin("Cache-Control: max-age=600", b"until close").start()
    try:
        async with running_cache(origin_url=origin.url) as cache:
            (await cache.get("/c")).assert_body(b"until close").assert_not_stored("close-delimited")
            (await cache.get("/c")).assert_body(b"until close")
            assert origin.requests == 2
    finally:
        await origin.stop()


async def test_a_close_delimited_body_is_stored_where_the_service_allows_it() -> None:
    origin = await CloseDelimitedOrigin("Cache-Control: max-age=600", b"until close").start()
    try:
        async with running_cache(origin_url=origin.url, cache_close_delimited=True) as cache:
            (await cache.get("/c")).assert_body(b"until close").assert_stored()
            (await cache.get("/c")).assert_body(b"until close").assert_hit()
            assert origin.requests == 1
    finally:
        await origin.stop()


async def test_a_404_is_stored_for_the_services_negative_ttl() -> None:
    async with running_cache(negative_ttl=30) as cache:
        cache.origin.responds("/missing", 404, body=b"no")
        (await cache.get("/missing")).assert_status(404).assert_stored()
        cache.clock.advance(29)
        (await cache.get("/missing")).assert_status(404).assert_hit()
        cache.clock.advance(2)
        (await cache.get("/missing")).assert_says("fwd=stale")


async def test_a_chunked_body_past_the_limit_that_arrived_whole_is_cut_and_not_stored() -> None:
    # no Content-Length to refuse it by, and small enough to reach the fill whole with
    # its head (the upstream client's whole-body path): cut at the limit all the same
    big = b"c" * 5000
    chunked = f"{len(big):x}\r\n".encode() + big + b"\r\n0\r\n\r\n"
    origin = await CloseDelimitedOrigin(
        "Cache-Control: max-age=600\r\nTransfer-Encoding: chunked", chunked
    ).start()
    try:
        async with running_cache(origin_url=origin.url, max_object_size=1000) as cache:
            for _ in range(2):
                try:
                    reply = await cache.get("/chunked")
                except aiohttp.ClientPayloadError:
                    pass  # cut after the head: the client sees a truncated body
                else:
                    assert reply.body != big  # never handed out as a whole one
                await cache.background_done()
                assert cache.stored("/chunked") is None
            assert origin.requests == 2
            assert cache.engine.metrics.not_stored_too_large.value == 2
    finally:
        await origin.stop()
