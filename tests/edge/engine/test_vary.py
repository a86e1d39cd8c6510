"""Vary (RFC 9111 4.1): one stored variant per value of the fields a response varies
on, found through the URL's Vary index, at most `max_variants` of them."""

from __future__ import annotations

from edge.cache.model import VaryIndex
from tests.support.engine_harness import running_cache

VARY = {"cache_control": "max-age=600", "Vary": "Accept-Language"}


async def test_each_value_of_a_varying_field_gets_its_own_variant() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/v", body=b"english", **VARY)
        (await cache.get("/v", Accept_Language="en")).assert_stored()
        cache.origin.responds("/v", body=b"french", **VARY)
        (await cache.get("/v", Accept_Language="fr")).assert_body(b"french").assert_stored()
        (await cache.get("/v", Accept_Language="en")).assert_body(b"english").assert_hit()
        (await cache.get("/v", Accept_Language="fr")).assert_body(b"french").assert_hit()
        assert cache.origin.count("/v") == 2
        index = cache.stored("/v")
        assert index is not None and isinstance(index.meta, VaryIndex)
        assert index.meta.fields == ("accept-language",)
        assert len(index.meta.variants) == 2


async def test_a_request_without_the_field_is_a_variant_of_its_own() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/v", body=b"english", **VARY)
        await cache.get("/v", Accept_Language="en")
        cache.origin.responds("/v", body=b"default", **VARY)
        (await cache.get("/v")).assert_body(b"default").assert_says("fwd=vary-miss")
        (await cache.get("/v")).assert_body(b"default").assert_hit()


async def test_beyond_max_variants_the_oldest_variant_is_dropped() -> None:
    async with running_cache(max_variants=2) as cache:
        for language in ("en", "fr", "de"):
            cache.origin.responds("/v", body=language.encode(), **VARY)
            await cache.get("/v", Accept_Language=language)
        index = cache.stored("/v")
        assert index is not None and isinstance(index.meta, VaryIndex)
        assert len(index.meta.variants) == 2
        (await cache.get("/v", Accept_Language="de")).assert_body(b"de").assert_hit()
        (await cache.get("/v", Accept_Language="fr")).assert_body(b"fr").assert_hit()
        cache.origin.responds("/v", body=b"en again", **VARY)
        (await cache.get("/v", Accept_Language="en")).assert_body(b"en again").assert_stored()
        assert cache.origin.count("/v") == 4


async def test_vary_star_is_never_served_from_the_cache() -> None:
    # RFC 9111 4.1: "*" always fails to match
    async with running_cache() as cache:
        cache.origin.responds("/star", cache_control="max-age=600", body=b"x", Vary="*")
        await cache.get("/star")
        (await cache.get("/star")).assert_body(b"x").assert_says("fwd=")
        assert cache.origin.count("/star") == 2


async def test_a_variant_is_revalidated_on_its_own_and_freshened_by_304() -> None:
    async with running_cache() as cache:
        route = cache.origin.responds(
            "/v", cache_control="max-age=10", body=b"en", etag='"v"', Vary="Accept-Language"
        )
        await cache.get("/v", Accept_Language="en")
        cache.clock.advance(11)
        route.headers["X-New"] = "1"
        reply = await cache.get("/v", Accept_Language="en")
        reply.assert_body(b"en").assert_says("fwd-status=304")
        assert reply.headers["X-New"] == "1"
        (await cache.get("/v", Accept_Language="en")).assert_hit().assert_body(b"en")
