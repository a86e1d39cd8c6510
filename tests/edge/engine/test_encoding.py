"""Content codings: br and gzip variants made once at fill time and stored, chosen
per request by Accept-Encoding with its q-values (RFC 9110 12.5.3)."""

from __future__ import annotations

import gzip

import brotli

from tests.support.engine_harness import CacheUnderTest, running_cache

TEXT = b"the quick brown fox jumps over the lazy dog. " * 200


async def _stored_with_variants(cache: CacheUnderTest, content_type: str = "text/plain") -> None:
    cache.origin.responds("/t", cache_control="max-age=600", body=TEXT, Content_Type=content_type)
    (await cache.get("/t")).assert_stored()
    await cache.background_done()


async def test_br_and_gzip_variants_are_stored_once_after_the_fill() -> None:
    async with running_cache() as cache:
        await _stored_with_variants(cache)
        entry = cache.stored("/t")
        assert entry is not None
        assert set(entry.bodies) == {"identity", "br", "gzip"}


async def test_a_client_gets_the_coding_it_prefers_by_q_value() -> None:
    async with running_cache() as cache:
        await _stored_with_variants(cache)
        br = (await cache.get("/t", Accept_Encoding="gzip, br")).assert_hit()
        assert br.headers["Content-Encoding"] == "br"
        assert brotli.decompress(br.body) == TEXT
        gz = (await cache.get("/t", Accept_Encoding="br;q=0.5, gzip;q=1")).assert_hit()
        assert gz.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(gz.body) == TEXT
        plain = (await cache.get("/t", Accept_Encoding="br;q=0, gzip;q=0")).assert_hit()
        assert "Content-Encoding" not in plain.headers
        assert plain.body == TEXT
        assert "Accept-Encoding" in plain.headers["Vary"]
        assert cache.origin.count("/t") == 1


async def test_a_client_that_sends_no_accept_encoding_preference_gets_identity() -> None:
    async with running_cache() as cache:
        await _stored_with_variants(cache)
        reply = (await cache.get("/t", Accept_Encoding="identity")).assert_hit()
        assert "Content-Encoding" not in reply.headers and reply.body == TEXT


async def test_incompressible_types_are_not_compressed() -> None:
    async with running_cache() as cache:
        await _stored_with_variants(cache, "image/png")
        entry = cache.stored("/t")
        assert entry is not None and set(entry.bodies) == {"identity"}
        reply = await cache.get("/t", Accept_Encoding="br, gzip")
        assert "Content-Encoding" not in reply.headers


async def test_an_origin_coding_is_decoded_for_a_client_that_does_not_accept_it() -> None:
    async with running_cache() as cache:
        cache.origin.responds(
            "/gz",
            cache_control="max-age=600",
            body=gzip.compress(TEXT),
            Content_Type="text/plain",
            Content_Encoding="gzip",
        )
        await cache.get("/gz", Accept_Encoding="gzip")
        await cache.background_done()
        entry = cache.stored("/gz")
        assert entry is not None and "identity" in entry.bodies
        plain = (await cache.get("/gz", Accept_Encoding="identity")).assert_hit()
        assert "Content-Encoding" not in plain.headers and plain.body == TEXT
