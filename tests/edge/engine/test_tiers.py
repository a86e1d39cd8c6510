"""Edge and shield engines together, through the real shield ring: revalidation
through the tiers and staleness that travels down from the shield."""

from __future__ import annotations

from tests.support.engine_harness import running_tiers, until


async def test_an_edge_revalidates_through_the_shield_which_answers_304_from_its_copy() -> None:
    async with running_tiers() as tiers:
        edge = tiers.edges[0]
        # both tiers keep it 10 s, so the edge's revalidation finds the shield stale too
        tiers.origin.responds(
            "/reval",
            cache_control="max-age=10",
            body=b"same",
            etag='"e1"',
            CDN_Cache_Control="max-age=10",
        )
        (await edge.get("/reval")).assert_status(200)
        tiers.clock.advance(11)
        again = await edge.get("/reval")
        again.assert_status(200).assert_body(b"same")
        # both tiers revalidated: the origin saw one conditional request and answered 304
        assert tiers.origin.count("/reval") == 2
        assert tiers.origin.last_headers("/reval")["If-None-Match"] == '"e1"'
        assert "fwd=stale" in again.tiers[-1] and "fwd-status=304" in again.tiers[-1]


async def test_what_a_shield_serves_stale_is_stale_at_the_edge_too() -> None:
    swr = "max-age=10, stale-while-revalidate=60"
    async with running_tiers(edges=2) as tiers:
        edge1, edge2 = tiers.edges
        tiers.origin.responds("/swr", cache_control=swr, body=b"old")
        await edge1.get("/swr")  # the shield stores it
        tiers.clock.advance(11)
        tiers.origin.responds("/swr", cache_control=swr, body=b"new")
        release = tiers.origin.hold("/swr")
        # edge2 has nothing: the shield answers from its stale copy (and revalidates)
        stale = (await edge2.get("/swr")).assert_body(b"old")
        assert "stale-while-revalidate" in stale.tiers[0]
        assert "X-Edgeshield-Stale" not in stale.headers
        # edge2 stored that answer as already stale, never as fresh
        again = (await edge2.get("/swr")).assert_body(b"old")
        assert "detail=stale-while-revalidate" in again.tiers[-1], again.tiers
        await until(lambda: tiers.origin.count("/swr") == 2, "the shield's revalidation")
        release.set()
        await tiers.shield.background_done()
        await edge2.background_done()
        # edge2's own revalidation met the shield's in flight, so it got the old body
        # again (stale); its next stale hit revalidates against the shield's new copy
        (await edge2.get("/swr")).assert_body(b"old").assert_stale("stale-while-revalidate")
        await edge2.background_done()
        newer = (await edge2.get("/swr")).assert_hit()
        newer.assert_body(b"new")
        assert "X-Edgeshield-Stale" not in newer.headers


async def test_origin_down_serves_stale_if_error_through_both_tiers() -> None:
    async with running_tiers(edges=2) as tiers:
        edge1, edge2 = tiers.edges
        tiers.origin.responds(
            "/stale.txt", cache_control="max-age=1, stale-if-error=300", body=b"useful\n"
        )
        (await edge1.get("/stale.txt")).assert_status(200)
        tiers.clock.advance(2)  # both tiers hold it stale
        await tiers.origin.stop()
        for edge in (edge1, edge2):  # edge1 holds a stale copy, edge2 none
            reply = await edge.get("/stale.txt")
            reply.assert_status(200).assert_body(b"useful\n")
            assert "stale-if-error" in reply.headers["Cache-Status"], reply.tiers
        assert tiers.origin.count("/stale.txt") == 1
        uncached = await edge2.get("/never-stored.txt")
        assert uncached.status in (502, 504)
        assert len(uncached.body) < 512
        assert b"origin" in uncached.body.lower(), uncached.body
