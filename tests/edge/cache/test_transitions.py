"""What the cache does after the fetch (`edge.cache.transitions`), sentence by sentence.

RFC 9111 (storing, 304 freshening, serving stale when disconnected) and RFC 5861
(stale-if-error). The clock is frozen: "stored at NOW, failed at NOW + 61".
"""

from __future__ import annotations

from multidict import CIMultiDict

from edge.cache.purge import PurgeVerdict
from edge.cache.transitions import (
    Error,
    Fetched,
    NotModified,
    ServeStale,
    ServeWithoutStoring,
    StoreAndServe,
    UpstreamFailed,
    after_error,
    after_fetch,
    content_length,
    freshness,
    invalidated_targets,
    may_use_hot_lane,
    only_if_cached,
)
from tests.edge.cache.test_policy import NOW, headers, http_date, stored

LIMIT = 1000


def answered(
    status: int,
    *fields: str,
    request: tuple[str, ...] = (),
    revalidating: bool = False,
    close_delimited: bool = False,
    cache_close_delimited: bool = False,
) -> Fetched:
    """`after_fetch` of an upstream answer (dated NOW) to a fill's GET."""
    return after_fetch(
        status,
        headers(*request),
        headers(f"Date: {http_date(NOW)}", *fields),
        revalidating=revalidating,
        limit=LIMIT,
        close_delimited=close_delimited,
        cache_close_delimited=cache_close_delimited,
    )


def failed_at(
    now: float, *fields: str, unreachable: bool = False, verdict: PurgeVerdict = PurgeVerdict.NONE
) -> object:
    """`after_error` at `now` for an object stored at NOW with `fields`."""
    return after_error(
        stored(*fields),
        now,
        verdict=verdict,
        purged_at=None,
        unreachable=unreachable,
        max_stale_when_unreachable=3600,
    )


# -- RFC 9111 4.3.4: freshening stored responses upon validation --------------------------
def test_a_304_to_our_conditional_request_freshens_the_stored_object() -> None:
    assert answered(304, "Cache-Control: max-age=60", revalidating=True) == NotModified()


def test_a_304_we_did_not_ask_for_is_not_stored() -> None:
    # no stored object was validated: the 304 answers the client's own validators
    assert answered(304, "Cache-Control: max-age=60") == ServeWithoutStoring(
        "not-modified-for-client"
    )


# -- RFC 5861 4: "an error is any situation that would result in a 500, 502, 503, or 504"
def test_each_error_status_is_an_upstream_failure() -> None:
    for status in (500, 502, 503, 504):
        assert answered(status) == UpstreamFailed(status)
        assert answered(status, "Cache-Control: max-age=60", revalidating=True) == (
            UpstreamFailed(status)
        )


def test_an_error_status_is_a_failure_even_while_revalidating() -> None:
    assert answered(503, revalidating=True) == UpstreamFailed(503)


# -- RFC 9111 3: storing responses --------------------------------------------------------
def test_a_storable_answer_is_stored_and_served() -> None:
    assert answered(200, "Cache-Control: max-age=60") == StoreAndServe(())


def test_a_no_store_answer_is_served_without_storing() -> None:
    assert answered(200, "Cache-Control: no-store") == ServeWithoutStoring("not-storable")


def test_a_private_answer_is_served_without_storing() -> None:
    assert answered(200, "Cache-Control: private, max-age=60") == ServeWithoutStoring(
        "not-storable"
    )


def test_an_answer_larger_than_the_object_limit_is_served_without_storing() -> None:
    fields = ("Cache-Control: max-age=60", f"Content-Length: {LIMIT + 1}")
    assert answered(200, *fields) == ServeWithoutStoring("too-large")
    assert answered(200, "Cache-Control: max-age=60", f"Content-Length: {LIMIT}") == (
        StoreAndServe(())
    )


def test_a_close_delimited_answer_is_not_stored_unless_the_service_allows_it() -> None:
    # RFC 9112 6.3 item 8: its end cannot be told from a cut connection
    assert answered(200, "Cache-Control: max-age=60", close_delimited=True) == (
        ServeWithoutStoring("close-delimited")
    )
    assert answered(
        200, "Cache-Control: max-age=60", close_delimited=True, cache_close_delimited=True
    ) == StoreAndServe(())


# -- RFC 9111 4.1: calculating cache keys with the Vary header field ----------------------
def test_vary_selects_the_variant_by_the_listed_request_fields() -> None:
    assert answered(200, "Cache-Control: max-age=60", "Vary: Accept-Language, Cookie") == (
        StoreAndServe(("accept-language", "cookie"))
    )


def test_vary_on_accept_encoding_alone_keeps_one_variant_we_negotiate_ourselves() -> None:
    assert answered(200, "Cache-Control: max-age=60", "Vary: Accept-Encoding") == (
        StoreAndServe(())
    )


def test_vary_star_is_never_stored() -> None:
    assert answered(200, "Cache-Control: max-age=60", "Vary: *") == (
        ServeWithoutStoring("not-storable")
    )


# -- RFC 5861 4 and RFC 9111 4.2.4: serving stale on failure ------------------------------
def test_without_a_stored_copy_the_error_is_relayed() -> None:
    verdict = after_error(
        None,
        NOW,
        verdict=PurgeVerdict.NONE,
        purged_at=None,
        unreachable=True,
        max_stale_when_unreachable=3600,
    )
    assert verdict == Error()


def test_stale_if_error_stands_in_within_its_window() -> None:
    fields = ("Cache-Control: max-age=60, stale-if-error=30",)
    assert failed_at(NOW + 61, *fields) == ServeStale("stale-if-error")
    assert failed_at(NOW + 91, *fields) == Error()


def test_a_5xx_answer_is_not_a_disconnection() -> None:
    # "it is disconnected": an origin that answers 503 was reached
    assert failed_at(NOW + 61, "Cache-Control: max-age=60") == Error()


def test_an_unreachable_origin_lets_a_stale_copy_serve() -> None:
    assert failed_at(NOW + 61, "Cache-Control: max-age=60", unreachable=True) == ServeStale(
        "stale-when-unreachable"
    )


def test_must_revalidate_forbids_stale_even_when_unreachable() -> None:
    # "A cache MUST NOT generate a stale response if it is prohibited by ... a
    # must-revalidate response directive"
    assert failed_at(NOW + 61, "Cache-Control: max-age=60, must-revalidate", unreachable=True) == (
        Error()
    )


def test_a_hard_purge_is_never_undone_by_a_failure() -> None:
    fields = ("Cache-Control: max-age=60, stale-if-error=3600",)
    assert failed_at(NOW + 61, *fields, unreachable=True, verdict=PurgeVerdict.GONE) == Error()


# -- the request side: the fast lane and only-if-cached ----------------------------------
def test_a_plain_get_may_use_the_fast_lane() -> None:
    assert may_use_hot_lane(headers("Host: example.com", "Accept-Encoding: br"))


def test_fields_that_need_a_decision_take_the_full_path() -> None:
    for field in (
        "Authorization: Bearer x",
        "Range: bytes=0-1",
        "If-None-Match: x",
        "If-Modified-Since: x",
        "If-Match: x",
        "If-Unmodified-Since: x",
        "CDN-Loop: a",
        "Cache-Control: no-cache",
    ):
        assert not may_use_hot_lane(headers(field)), field


def test_only_if_cached_is_read_from_the_request_cache_control() -> None:
    # RFC 9111 5.2.1.7: "respond with either a stored response or a 504"
    assert only_if_cached(headers("Cache-Control: max-stale, ONLY-IF-CACHED"))
    assert not only_if_cached(headers("Cache-Control: max-age=0"))
    assert not only_if_cached(CIMultiDict())


# -- RFC 9111 4.2.3: one age for every path -----------------------------------------------
def test_freshness_is_the_age_and_ttl_every_path_uses() -> None:
    meta = stored("Cache-Control: max-age=60")
    assert freshness(meta, NOW + 10) == (10.0, 50.0)


def test_a_clock_behind_the_response_time_never_makes_an_object_younger() -> None:
    # the fast lane used to subtract without the clamp: a step back of the clock made
    # an object younger than when it arrived, and fresh for longer than its lifetime
    meta = stored("Cache-Control: max-age=60")
    age, ttl = freshness(meta, NOW - 30)
    assert age == meta.age(NOW - 30) == 0.0
    assert ttl == 60.0


def test_content_length_is_read_only_as_plain_digits() -> None:
    assert content_length(headers("Content-Length: 12")) == 12
    assert content_length(headers("Content-Length: -1")) is None
    assert content_length(headers("Content-Length: 1e3")) is None
    assert content_length(CIMultiDict()) is None


# -- RFC 9111 4.4: invalidating stored responses ------------------------------------------
def test_an_unsafe_request_invalidates_its_target() -> None:
    assert invalidated_targets("example.com", "/cart", headers()) == {"/cart"}


def test_location_and_content_location_on_the_same_host_are_invalidated() -> None:
    fields = headers("Location: /cart/7?x=1", "Content-Location: http://example.com/cart")
    assert invalidated_targets("example.com", "/cart/add", fields) == {
        "/cart/add",
        "/cart/7?x=1",
        "/cart",
    }


def test_a_location_on_another_host_is_not_invalidated() -> None:
    # "MUST NOT invalidate a URI ... if the host part of that URI differs"
    fields = headers("Location: http://evil.example.net/cart")
    assert invalidated_targets("example.com", "/cart/add", fields) == {"/cart/add"}
