"""Collapsed forwarding: however many clients miss at once, one upstream fetch."""

from __future__ import annotations

import asyncio

from tests.support.engine_harness import running_cache, until


async def test_twenty_concurrent_misses_make_one_upstream_fetch() -> None:
    async with running_cache() as cache:
        payload = bytes(range(256)) * 400
        cache.origin.responds(
            "/cold",
            cache_control="max-age=300",
            body=payload,
            Content_Type="application/octet-stream",
        )
        release = cache.origin.hold("/cold")
        clients = [asyncio.ensure_future(cache.get("/cold")) for _ in range(20)]
        await until(lambda: cache.engine.metrics.misses.value == 20, "all twenty misses")
        release.set()
        replies = await asyncio.gather(*clients)
        for reply in replies:
            reply.assert_status(200).assert_body(payload)
        assert cache.origin.count("/cold") == 1
        assert sum("collapsed" in r.cache_status for r in replies) == 19
        (await cache.get("/cold")).assert_hit()


async def test_a_not_storable_answer_is_not_shared_between_collapsed_clients() -> None:
    # each waiter of a fill whose answer may not be shared asks the origin itself
    async with running_cache() as cache:
        cache.origin.responds("/private", cache_control="private", body=b"mine")
        release = cache.origin.hold("/private")
        clients = [asyncio.ensure_future(cache.get("/private")) for _ in range(3)]
        await until(lambda: cache.engine.metrics.misses.value == 3, "all three misses")
        release.set()
        replies = await asyncio.gather(*clients)
        for reply in replies:
            reply.assert_status(200).assert_body(b"mine")
        assert cache.origin.count("/private") == 3
