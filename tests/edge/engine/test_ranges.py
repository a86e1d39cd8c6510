"""Range requests (RFC 9110 14): 206 and 416 from a stored object and from a fill,
which stores the whole object while the client gets its range."""

from __future__ import annotations

from tests.support.engine_harness import CacheUnderTest, running_cache

PAYLOAD = bytes(range(256)) * 4  # 1024 bytes
BINARY = {"cache_control": "max-age=600", "Content_Type": "application/octet-stream"}


def _serve(cache: CacheUnderTest, path: str) -> None:
    cache.origin.responds(path, body=PAYLOAD, etag='"r1"', **BINARY)


async def test_a_range_of_a_stored_object_is_a_206() -> None:
    async with running_cache() as cache:
        _serve(cache, "/bin")
        await cache.get("/bin")
        reply = (await cache.get("/bin", Range="bytes=100-199")).assert_status(206).assert_hit()
        assert reply.body == PAYLOAD[100:200]
        assert reply.headers["Content-Range"] == "bytes 100-199/1024"
        suffix = (await cache.get("/bin", Range="bytes=-10")).assert_status(206)
        assert suffix.body == PAYLOAD[-10:]
        assert cache.origin.count("/bin") == 1


async def test_an_unsatisfiable_range_of_a_stored_object_is_a_416() -> None:
    async with running_cache() as cache:
        _serve(cache, "/bin")
        await cache.get("/bin")
        reply = (await cache.get("/bin", Range="bytes=5000-")).assert_status(416)
        assert reply.headers["Content-Range"] == "bytes */1024"


async def test_a_range_on_a_miss_is_a_206_and_the_whole_object_is_stored() -> None:
    async with running_cache() as cache:
        _serve(cache, "/bin")
        reply = (await cache.get("/bin", Range="bytes=0-9")).assert_status(206).assert_stored()
        assert reply.body == PAYLOAD[:10]
        assert reply.headers["Content-Range"] == "bytes 0-9/1024"
        # the range left before the fill committed the rest (only a whole-body
        # waiter's last chunk waits for the commit)
        await cache.background_done()
        (await cache.get("/bin")).assert_status(200).assert_body(PAYLOAD).assert_hit()
        assert cache.origin.count("/bin") == 1


async def test_an_unsatisfiable_range_on_a_miss_is_a_416() -> None:
    async with running_cache() as cache:
        _serve(cache, "/bin")
        reply = (await cache.get("/bin", Range="bytes=2000-2100")).assert_status(416)
        assert reply.headers["Content-Range"] == "bytes */1024"


async def test_a_failed_if_range_gets_the_whole_object() -> None:
    # RFC 9110 13.1.5
    async with running_cache() as cache:
        _serve(cache, "/bin")
        await cache.get("/bin")
        matching = await cache.get("/bin", Range="bytes=0-9", If_Range='"r1"')
        matching.assert_status(206)
        changed = await cache.get("/bin", Range="bytes=0-9", If_Range='"r0"')
        changed.assert_status(200).assert_body(PAYLOAD)


async def test_a_range_on_a_stale_object_is_answered_after_its_304() -> None:
    async with running_cache() as cache:
        cache.origin.responds("/r", cache_control="max-age=10", body=b"0123456789", etag='"e"')
        await cache.get("/r")
        cache.clock.advance(11)
        reply = (await cache.get("/r", Range="bytes=2-4")).assert_status(206)
        reply.assert_says("fwd-status=304")
        assert reply.body == b"234"
