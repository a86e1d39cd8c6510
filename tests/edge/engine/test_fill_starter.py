"""A fill and the request that started it: the fill outlives its starter's client,
reaches a large body's starter as it is written, and answers a HEAD at the head; the
fill's time is counted once, until its body is stored."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.engine_harness import HOST, running_cache, until


async def test_clients_collapsed_onto_a_fill_get_it_when_its_starter_has_gone() -> None:
    # the starter's client hangs up while the fill is in flight: the fill completes
    # for the request collapsed onto it
    async with running_cache() as cache:
        payload = bytes(range(256)) * 8
        cache.origin.responds("/gone", cache_control="max-age=300", body=payload)
        release = cache.origin.hold("/gone")
        async with aiohttp.ClientSession() as own:
            starter = asyncio.ensure_future(
                own.get(cache.base + "/gone", headers={"Host": HOST, "Accept-Encoding": "identity"})
            )
            await until(lambda: cache.origin.count("/gone") == 1, "the starter's fill")
            other = asyncio.ensure_future(cache.get("/gone"))
            await until(lambda: cache.engine.metrics.misses.value == 2, "the collapsed miss")
            starter.cancel()  # the starter's connection closes
            await asyncio.gather(starter, return_exceptions=True)
        release.set()
        reply = await other
        reply.assert_status(200).assert_body(payload)
        assert "collapsed" in reply.cache_status
        assert cache.origin.count("/gone") == 1
        (await cache.get("/gone")).assert_hit()


async def test_a_large_body_reaches_its_starter_while_the_fill_goes_on() -> None:
    # a body over WHOLE_AT_COMMIT is streamed to its starter as it is written, and the
    # fill's time counts once, until it is stored
    async with running_cache() as cache:
        payload = bytes(range(256)) * 1024  # 256 KiB
        cache.origin.responds("/large", cache_control="max-age=300", body=payload)
        (await cache.get("/large")).assert_status(200).assert_body(payload)
        await cache.background_done()
        assert sum(cache.engine.metrics.fill_seconds.counts) == 1
        assert cache.engine.metrics.stored.value == 1
        (await cache.get("/large")).assert_hit().assert_body(payload)


async def test_a_head_request_starts_its_fill_on_a_task_and_answers_at_the_head() -> None:
    # HEAD answers with the head alone; its fill (a GET) stores the body for the next
    async with running_cache() as cache:
        cache.origin.responds("/head", cache_control="max-age=300", body=b"h" * 100)
        reply = await cache.request("HEAD", "/head")
        reply.assert_status(200)
        await cache.background_done()
        (await cache.get("/head")).assert_hit().assert_body(b"h" * 100)
