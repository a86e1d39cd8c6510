"""A decompression bomb is refused once, not fetched and decoded again for every
request: the key is answered with a 502 for a while, until a purge covers it.

`Refusals` on its own, then a real engine in front of a real origin sending a br
bomb (tests/support/engine_harness.py, with a frozen clock).
"""

from __future__ import annotations

import brotli

from edge.refusals import Refusals
from tests.support.engine_harness import CacheUnderTest, running_cache

MiB = 1024 * 1024
BOMB = brotli.compress(bytes(8 * MiB))  # a few dozen bytes that decode to 8 MiB


def answers_with_a_bomb(cache: CacheUnderTest, path: str) -> None:
    """The origin answers `path` with BOMB, cacheable, as br-coded text."""
    cache.origin.responds(
        path,
        cache_control="max-age=600",
        body=BOMB,
        Content_Encoding="br",
        Content_Type="text/plain",
    )


def test_a_refusal_lasts_its_time_and_is_bounded() -> None:
    refusals = Refusals(seconds=60, limit=2)
    refusals.refuse("a", 100.0)
    assert refusals.refused_at("a", 159.9) == 100.0
    assert refusals.refused_at("a", 160.0) is None
    assert refusals.refused_at("a", 100.0) is None  # forgotten once it ran out
    for key in ("a", "b", "c"):
        refusals.refuse(key, 200.0)
    assert len(refusals) == 2 and refusals.refused_at("a", 200.0) is None
    refusals.forget("b")
    assert refusals.refused_at("b", 200.0) is None
    assert refusals.refused_at("c", 200.0) == 200.0


async def test_a_bomb_is_fetched_and_decoded_once_while_it_is_refused() -> None:
    async with running_cache(max_object_size=MiB) as cache:
        answers_with_a_bomb(cache, "/bomb.txt")
        first = await cache.get("/bomb.txt", Accept_Encoding="br")
        assert first.status == 200  # the coded body passes; its variants are refused
        await cache.background_done()
        assert cache.engine.metrics.decode_refused.value >= 1
        refused = cache.engine.metrics.decode_refused.value
        for accept in ("identity", "br", "gzip"):
            reply = await cache.get("/bomb.txt", Accept_Encoding=accept)
            reply.assert_status(502).assert_says("detail=decode-limit")
        assert cache.origin.count("/bomb.txt") == 1
        assert cache.engine.metrics.decode_refused.value == refused

        # a while later the key is fetched again (and refused again)
        cache.clock.advance(61)
        assert (await cache.get("/bomb.txt", Accept_Encoding="br")).status == 200
        await cache.background_done()
        assert cache.origin.count("/bomb.txt") == 2
        reply = await cache.get("/bomb.txt", Accept_Encoding="br")
        reply.assert_status(502)


async def test_a_purge_lifts_a_refusal_at_once() -> None:
    async with running_cache(max_object_size=MiB) as cache:
        answers_with_a_bomb(cache, "/fixed.txt")
        await cache.get("/fixed.txt", Accept_Encoding="br")
        await cache.background_done()
        (await cache.get("/fixed.txt")).assert_status(502)
        # the operator fixes the origin and purges the URL
        cache.origin.responds("/fixed.txt", cache_control="max-age=600", body=b"fine")
        cache.clock.advance(1)
        cache.purge(urls=("/fixed.txt",))
        cache.clock.advance(1)
        (await cache.get("/fixed.txt")).assert_status(200).assert_body(b"fine")
        assert cache.origin.count("/fixed.txt") == 2
