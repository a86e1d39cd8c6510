"""A fill run by the request that starts it (`Filler.run_here`): on a front that never
cancels its request's task, a miss fetches, commits a small body and answers on that
one task, with no fill task of its own; every other request still collapses onto it,
and what has to wait for others goes on in the background."""

from __future__ import annotations

import asyncio

import aiohttp

from edge.cache.keys import primary_key
from tests.support.engine_harness import HOST, SERVICE, background_work, running_cache, until


async def test_a_small_miss_runs_its_fill_on_the_requests_own_task() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/small", cache_control="max-age=300", body=b"s" * 1024)
        release = cache.origin.hold("/small")
        client = asyncio.ensure_future(cache.get("/small"))
        await until(lambda: cache.origin.count("/small") == 1, "the fill's upstream request")
        # the fill is in flight (others would collapse onto it), and no task runs it
        assert cache.engine.fills.get(primary_key(SERVICE, HOST, "/small")) is not None
        assert background_work(cache.engine) == 0
        release.set()
        (await client).assert_status(200).assert_body(b"s" * 1024)
        assert background_work(cache.engine) == 0
        assert cache.engine.fills.get(primary_key(SERVICE, HOST, "/small")) is None
        assert sum(cache.engine.metrics.fill_seconds.counts) == 1
        (await cache.get("/small")).assert_hit()


async def test_clients_collapsed_onto_a_fill_get_it_when_its_starter_has_gone() -> None:
    # the starter's client hangs up while its request runs the fill: the front does not
    # cancel that request's task, so the fill completes for the one collapsed onto it
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
    # a body over WHOLE_AT_COMMIT is streamed to its starter as it is written: the rest
    # of its fill runs on a task, and the fill's time counts until it is stored
    async with running_cache() as cache:
        payload = bytes(range(256)) * 1024  # 256 KiB
        cache.origin.responds("/large", cache_control="max-age=300", body=payload)
        (await cache.get("/large")).assert_status(200).assert_body(payload)
        await cache.background_done()
        assert sum(cache.engine.metrics.fill_seconds.counts) == 1
        assert cache.engine.metrics.stored.value == 1
        (await cache.get("/large")).assert_hit().assert_body(payload)


async def test_a_head_request_starts_its_fill_on_a_task_and_answers_at_the_head() -> None:
    # HEAD answers with the head alone: its fill (a GET) runs on a task of its own
    async with running_cache() as cache:
        cache.origin.responds("/head", cache_control="max-age=300", body=b"h" * 100)
        reply = await cache.request("HEAD", "/head")
        reply.assert_status(200)
        await cache.background_done()
        (await cache.get("/head")).assert_hit().assert_body(b"h" * 100)
