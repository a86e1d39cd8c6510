"""The shared-cache decisions of `edge.cache.policy`, checked sentence by sentence.

RFC 9111 (HTTP caching), RFC 5861 (stale-while-revalidate, stale-if-error) and RFC
9213 (CDN-Cache-Control). The clock is frozen: every time is an argument, so a test
says "stored at NOW, asked at NOW + 61" and nothing sleeps. Headers are written the
way they travel ("Cache-Control: max-age=60"), and `stored(...)` stores a response
the way the engine does, through `build_meta`.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.cache.dates import format_http_date
from edge.cache.directives import parse_cache_control
from edge.cache.model import HeaderPairs, ObjectMeta
from edge.cache.policy import (
    HEURISTIC_MAX,
    Action,
    RequestKind,
    Storability,
    build_meta,
    classify_request,
    client_header_pairs,
    corrected_initial_age,
    decide,
    freshness_lifetime,
    may_serve_stale_on_error,
    merge_304_headers,
    storability,
    upstream_header_pairs,
)
from edge.cache.purge import PurgeVerdict

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT; the only "clock" these tests have
DAY = 86400.0


def http_date(ts: float) -> str:
    return format_http_date(ts)


def pairs(*fields: str) -> HeaderPairs:
    """Header lines as written on the wire ("Name: value") → (name, value) pairs."""
    out: list[tuple[str, str]] = []
    for line in fields:
        name, _, value = line.partition(":")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def headers(*fields: str) -> CIMultiDict[str]:
    return CIMultiDict(pairs(*fields))


def stored(
    *fields: str,
    status: int = 200,
    at: float = NOW,
    requested_at: float | None = None,
    dated: bool = True,
    negative_ttl: int = 0,
    default_stale_if_error: int = 0,
    force_stale: bool = False,
) -> ObjectMeta:
    """A response received at `at` and stored, as the engine stores one.

    Unless `dated` is false or a Date line is given, the origin stamped it `Date: at`
    (RFC 9110 6.6.1: an origin with a clock sends Date).
    """
    upstream = pairs(*fields)
    if dated and not any(name.lower() == "date" for name, _ in upstream):
        upstream = (("Date", http_date(at)), *upstream)
    return build_meta(
        status=status,
        upstream_pairs=upstream,
        request_time=at if requested_at is None else requested_at,
        response_time=at,
        stored_at=at,
        service="www",
        host="example.com",
        target="/a",
        compressible=False,
        negative_ttl=negative_ttl,
        default_stale_if_error=default_stale_if_error,
        force_stale=force_stale,
    )


def may_store(
    *fields: str,
    status: int = 200,
    method: str = "GET",
    request: tuple[str, ...] = (),
    negative_ttl: int = 0,
) -> Storability:
    """`storability` of a response (dated NOW) to a request with `request` headers."""
    return storability(
        method,
        status,
        headers(*request),
        headers(f"Date: {http_date(NOW)}", *fields),
        negative_ttl=negative_ttl,
    )


def action(meta: ObjectMeta, now: float, verdict: PurgeVerdict = PurgeVerdict.NONE) -> Action:
    return decide(meta, now, verdict).action


def names(header_pairs: HeaderPairs) -> set[str]:
    return {name.lower() for name, _ in header_pairs}


# --------------------------------------------------------------------------------------
# RFC 9111 2, 3.5, 4.4: which requests the cache takes part in
# --------------------------------------------------------------------------------------


class TestClassifyRequest:
    @pytest.mark.parametrize("method", ["GET", "HEAD"])
    def test_safe_methods_use_the_cache(self, method: str) -> None:
        """RFC 9111 2: "most commonly, caches store the successful result of a
        retrieval request: i.e., a 200 (OK) response to a GET request"."""
        assert classify_request(method, headers()) is RequestKind.CACHEABLE

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
    def test_unsafe_methods_pass_and_invalidate(self, method: str) -> None:
        """RFC 9111 4.4: "A cache MUST invalidate the target URI when it receives a
        non-error status code in response to an unsafe request method"."""
        assert classify_request(method, headers()) is RequestKind.INVALIDATING

    @pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
    def test_other_safe_methods_pass_untouched(self, method: str) -> None:
        """RFC 9110 9.2.1: OPTIONS and TRACE are safe, but their answers are not stored."""
        assert classify_request(method, headers()) is RequestKind.PASS

    @pytest.mark.parametrize("method", ["CONNECT", "PROPFIND", "M-SEARCH", "get"])
    def test_methods_not_known_to_be_safe_invalidate(self, method: str) -> None:
        """RFC 9111 4.4: unsafe "(including methods whose safety is unknown)"; methods
        are case-sensitive (RFC 9110 9.1): "get" is not GET."""
        assert classify_request(method, headers()) is RequestKind.INVALIDATING

    def test_a_request_with_authorization_may_use_the_cache(self) -> None:
        """RFC 9111 3.5: "A shared cache MUST NOT use a cached response to a request
        with an Authorization header field ... unless the response contains a
        Cache-Control field with a response directive ... that allows it to be stored
        by a shared cache": which responses those are is `decide`'s question."""
        auth = headers("Authorization: Basic eDp5")
        assert classify_request("GET", auth) is RequestKind.CACHEABLE


# --------------------------------------------------------------------------------------
# RFC 9111 3: storing responses
# --------------------------------------------------------------------------------------


class TestStorability:
    def test_a_200_with_max_age_is_stored(self) -> None:
        assert may_store("Cache-Control: max-age=60") == Storability(True, "")

    def test_a_200_without_freshness_information_is_stored_for_heuristics(self) -> None:
        """RFC 9111 3: the response has "a status code that is defined as
        heuristically cacheable"."""
        assert may_store().storable

    @pytest.mark.parametrize("method", ["HEAD", "POST", "PUT"])
    def test_only_responses_to_get_are_stored(self, method: str) -> None:
        """RFC 9111 3: "the request method is understood by the cache" — this cache
        stores GET only and answers HEAD from it."""
        verdict = may_store("Cache-Control: public, max-age=60", method=method)
        assert verdict == Storability(False, "method")

    @pytest.mark.parametrize("status", [100, 103, 206, 304, 600])
    def test_statuses_the_cache_does_not_store(self, status: int) -> None:
        """RFC 9111 3: "the response status code is final" and "if the response
        status code is 206 or 304, or the must-understand cache directive is
        present: the cache understands the response status code"; we store no
        partial (206) and a 304 is not a response of its own."""
        verdict = may_store("Cache-Control: public, max-age=60", status=status)
        assert verdict == Storability(False, f"status {status}")

    def test_response_no_store(self) -> None:
        """RFC 9111 3: "the no-store cache directive is not present in the response"."""
        assert may_store("Cache-Control: max-age=60, no-store").reason == "no-store"

    def test_request_no_store(self) -> None:
        """RFC 9111 5.2.1.5: "The no-store request directive indicates that a cache
        MUST NOT store any part of either this request or any response to it"."""
        verdict = may_store("Cache-Control: max-age=60", request=("Cache-Control: no-store",))
        assert verdict == Storability(False, "request no-store")

    def test_request_no_store_on_a_second_cache_control_line(self) -> None:
        """RFC 9110 5.3: several field lines of one name are one list, so no-store on
        the request's second Cache-Control line is still no-store (RFC 9111 5.2.1.5)."""
        verdict = may_store(
            "Cache-Control: max-age=60",
            request=("Cache-Control: max-age=0", "Cache-Control: no-store"),
        )
        assert verdict == Storability(False, "request no-store")

    def test_no_store_as_a_substring_of_another_request_directive_is_not_no_store(self) -> None:
        verdict = may_store(
            "Cache-Control: max-age=60", request=('Cache-Control: x-note="no-store"',)
        )
        assert verdict.storable

    def test_private(self) -> None:
        """RFC 9111 5.2.2.7: "a shared cache MUST NOT store the response"."""
        assert may_store("Cache-Control: private, max-age=60").reason == "private"

    def test_qualified_private_is_not_stored_either(self) -> None:
        """RFC 9111 5.2.2.7: with `private="X-User"` "a shared cache MUST NOT store the
        listed header fields"; this cache stores none of such a response, so the
        listed field can never reach another user."""
        verdict = may_store('Cache-Control: private="X-User", max-age=60', "X-User: alice")
        assert verdict == Storability(False, "private")

    def test_vary_star(self) -> None:
        """RFC 9111 4.1: "A stored response with a Vary header field value containing
        a member "*" always fails to match"."""
        assert may_store("Cache-Control: max-age=60", "Vary: Accept, *").reason == "vary *"

    def test_vary_on_named_fields_is_stored(self) -> None:
        assert may_store("Cache-Control: max-age=60", "Vary: Accept-Encoding").storable

    def test_set_cookie_without_public_is_not_shared(self) -> None:
        """Every CDN's rule: a response that sets a cookie is personal unless the
        origin says it may be shared."""
        verdict = may_store("Cache-Control: max-age=60", "Set-Cookie: id=1")
        assert verdict == Storability(False, "set-cookie")

    @pytest.mark.parametrize("cache_control", ["public, max-age=60", "s-maxage=60"])
    def test_set_cookie_with_public_or_s_maxage_is_shared(self, cache_control: str) -> None:
        assert may_store(f"Cache-Control: {cache_control}", "Set-Cookie: id=1").storable

    def test_a_response_to_an_authorized_request_is_not_stored_by_default(self) -> None:
        """RFC 9111 3.5: "A shared cache MUST NOT use a cached response to a request
        with an Authorization header field ... unless the response contains a
        Cache-Control field with a response directive ... that allows it"."""
        verdict = may_store("Cache-Control: max-age=60", request=("Authorization: Bearer t",))
        assert verdict == Storability(False, "authorization")

    @pytest.mark.parametrize(
        "cache_control", ["public", "s-maxage=60", "max-age=60, must-revalidate"]
    )
    def test_must_revalidate_public_and_s_maxage_allow_authorized_responses(
        self, cache_control: str
    ) -> None:
        """RFC 9111 3.5: "the following Cache-Control response directives have such an
        effect: must-revalidate (Section 5.2.2.2), public (Section 5.2.2.9), and
        s-maxage (Section 5.2.2.10)"."""
        verdict = may_store(f"Cache-Control: {cache_control}", request=("Authorization: x",))
        assert verdict.storable

    @pytest.mark.parametrize("status", [404, 410])
    def test_errors_are_not_stored_without_negative_caching(self, status: int) -> None:
        verdict = may_store(status=status)
        assert verdict == Storability(False, f"status {status} (negative caching off)")

    def test_a_404_is_stored_when_the_service_caches_errors(self) -> None:
        assert may_store(status=404, negative_ttl=30).storable

    @pytest.mark.parametrize(
        "field", ["Cache-Control: max-age=10", "Cache-Control: s-maxage=10", "Expires: X"]
    )
    def test_a_404_with_an_explicit_lifetime_is_stored_anyway(self, field: str) -> None:
        """The origin asked for it: RFC 9111 3 "the response contains ... an Expires
        header field ... a max-age response directive ... an s-maxage response
        directive"."""
        field = field.replace("X", http_date(NOW + 10))
        assert may_store(field, status=404).storable

    def test_a_redirect_without_explicit_freshness_is_not_stored(self) -> None:
        """302 is not heuristically cacheable (RFC 9110 15.4.3), so RFC 9111 3 needs an
        explicit lifetime or public."""
        assert may_store(status=302) == Storability(False, "no explicit freshness")
        assert may_store("Cache-Control: max-age=60", status=302).storable
        assert may_store("Cache-Control: public", status=302).storable

    def test_no_cache_alone_does_not_make_a_response_storable(self) -> None:
        """RFC 9111 3: "A cache MUST NOT store a response to a request unless ... the
        response contains at least one of: a public response directive; ... an
        Expires header field; a max-age response directive; ... an s-maxage response
        directive ...; a cache extension that allows it to be cached; or a status
        code that is defined as heuristically cacheable". no-cache is none of these."""
        assert not may_store("Cache-Control: no-cache", status=302).storable


class TestCacheDeception:
    """A response to a request with Cookie or Authorization is not stored on a
    heuristic lifetime: `/account.php/x.css` answered with only Last-Modified is a
    personal page the origin never meant to share (web cache deception)."""

    LAST_MODIFIED = f"Last-Modified: {http_date(NOW - 30 * DAY)}"

    @pytest.mark.parametrize("credential", ["Cookie: session=alice", "Authorization: Basic eA=="])
    def test_no_heuristic_freshness_for_a_credentialed_request(self, credential: str) -> None:
        verdict = may_store(self.LAST_MODIFIED, request=(credential,))
        assert not verdict.storable

    def test_without_credentials_the_heuristic_still_applies(self) -> None:
        assert may_store(self.LAST_MODIFIED).storable

    @pytest.mark.parametrize(
        "explicit",
        ["Cache-Control: max-age=60", "Cache-Control: s-maxage=60", "Cache-Control: public"],
    )
    def test_explicit_freshness_or_public_still_caches(self, explicit: str) -> None:
        verdict = may_store(explicit, self.LAST_MODIFIED, request=("Cookie: a=b",))
        assert verdict.storable

    def test_expires_is_explicit_too(self) -> None:
        verdict = may_store(f"Expires: {http_date(NOW + 60)}", request=("Cookie: a=b",))
        assert verdict.storable

    def test_configured_negative_caching_is_not_a_heuristic(self) -> None:
        verdict = may_store(status=404, request=("Cookie: a=b",), negative_ttl=30)
        assert verdict.storable

    def test_the_operator_may_allow_the_heuristic(self) -> None:
        verdict = storability(
            "GET",
            200,
            headers("Cookie: session=alice"),
            headers(f"Date: {http_date(NOW)}", self.LAST_MODIFIED),
            heuristic_with_credentials=True,
        )
        assert verdict.storable


# --------------------------------------------------------------------------------------
# RFC 9213: CDN-Cache-Control, and Surrogate-Control, take precedence
# --------------------------------------------------------------------------------------


class TestTargetedCacheControl:
    def test_cdn_cache_control_lets_a_cdn_store_what_browsers_must_not(self) -> None:
        """RFC 9213 2.2: a cache that selects a targeted field "MUST ignore the
        Cache-Control and Expires header fields in that response"."""
        fields = ("CDN-Cache-Control: max-age=600", "Cache-Control: private, no-store")
        assert may_store(*fields).storable
        meta = stored(*fields)
        assert action(meta, NOW + 599) is Action.SERVE
        assert action(meta, NOW + 601) is Action.REVALIDATE

    def test_cdn_cache_control_no_store_wins_over_a_public_cache_control(self) -> None:
        fields = ("CDN-Cache-Control: no-store", "Cache-Control: public, max-age=600")
        assert may_store(*fields) == Storability(False, "no-store")

    def test_cdn_cache_control_lifetime_beats_s_maxage(self) -> None:
        meta = stored("CDN-Cache-Control: max-age=30", "Cache-Control: s-maxage=600")
        assert meta.freshness_lifetime == 30

    def test_expires_is_ignored_under_cdn_cache_control(self) -> None:
        """RFC 9213 2.2: "... it MUST ignore the Cache-Control and Expires header
        fields in that response"."""
        meta = stored(
            "CDN-Cache-Control: stale-while-revalidate=30",
            f"Expires: {http_date(NOW + 600)}",
        )
        assert meta.freshness_lifetime == 0
        assert action(meta, NOW + 1) is Action.SERVE_STALE_REVALIDATE

    def test_an_invalid_cdn_cache_control_is_ignored_as_a_whole(self) -> None:
        """RFC 9213 2.1: "... parsing failures ... the field MUST be ignored"; the
        cache falls back to Cache-Control."""
        meta = stored("CDN-Cache-Control: max-age=(60", "Cache-Control: max-age=5")
        assert meta.freshness_lifetime == 5

    def test_surrogate_control_overrides_cache_control(self) -> None:
        meta = stored("Surrogate-Control: max-age=300", "Cache-Control: max-age=5")
        assert meta.freshness_lifetime == 300
        assert may_store("Surrogate-Control: no-store", "Cache-Control: max-age=5") == (
            Storability(False, "no-store")
        )

    def test_cdn_cache_control_overrides_surrogate_control(self) -> None:
        meta = stored("CDN-Cache-Control: max-age=7", "Surrogate-Control: max-age=300")
        assert meta.freshness_lifetime == 7

    def test_surrogate_fields_and_purge_tags_never_reach_a_client(self) -> None:
        """Surrogate-Control is consumed by the surrogate (Edge Architecture 1.0);
        surrogate keys are for the purge API only; CDN-Cache-Control targets every CDN
        on the path (RFC 9213 2) and goes on to the next (docs/caching.md)."""
        meta = stored(
            "CDN-Cache-Control: max-age=60",
            "Surrogate-Control: max-age=60",
            "Surrogate-Key: product-1 catalog",
            "Cache-Tag: red, blue",
            "Cache-Control: max-age=5",
            "Content-Type: text/plain",
        )
        assert names(meta.client_headers) == {"cache-control", "content-type", "cdn-cache-control"}
        assert meta.surrogate_keys == ("product-1", "catalog", "red", "blue")
        assert names(meta.upstream_headers) >= {"surrogate-key", "cdn-cache-control"}

    def test_client_headers_drop_per_response_framing_and_extras(self) -> None:
        kept = client_header_pairs(
            pairs(
                "Content-Length: 5",
                "Content-Encoding: gzip",
                "Age: 3",
                "Date: x",
                "Via: 1.1 shield",
                "X-Debug: 1",
                'ETag: "v1"',
            ),
            extra_omitted=frozenset({"x-debug"}),
        )
        assert kept == (("ETag", '"v1"'),)


# --------------------------------------------------------------------------------------
# RFC 9111 4.2.1, 4.2.2: freshness lifetime
# --------------------------------------------------------------------------------------


class TestFreshnessLifetime:
    def test_max_age(self) -> None:
        """RFC 9111 4.2: "A fresh response is one whose age has not yet exceeded its
        freshness lifetime"."""
        meta = stored("Cache-Control: max-age=60")
        assert action(meta, NOW + 59) is Action.SERVE
        assert action(meta, NOW + 61) is Action.REVALIDATE

    def test_s_maxage_comes_before_max_age(self) -> None:
        """RFC 9111 4.2.1: "If the cache is shared and the s-maxage response directive
        is present, use its value"."""
        assert stored("Cache-Control: max-age=600, s-maxage=30").freshness_lifetime == 30

    def test_max_age_comes_before_expires(self) -> None:
        """RFC 9111 5.3: "If a response includes a Cache-Control header field with the
        max-age directive, a recipient MUST ignore the Expires header field"."""
        meta = stored("Cache-Control: max-age=30", f"Expires: {http_date(NOW + 600)}")
        assert meta.freshness_lifetime == 30

    def test_expires_minus_date(self) -> None:
        """RFC 9111 4.2.1: "Otherwise, if the Expires header field is present, use its
        value minus the value of the Date header field"."""
        meta = stored(f"Date: {http_date(NOW - 100)}", f"Expires: {http_date(NOW + 500)}")
        assert meta.freshness_lifetime == 600
        # the Date says it is already 100 s old on arrival (apparent age)
        assert action(meta, NOW + 499) is Action.SERVE
        assert action(meta, NOW + 501) is Action.REVALIDATE

    def test_expires_without_date_counts_from_the_time_of_receipt(self) -> None:
        """RFC 9111 4.2.1: "use its value minus the value of the Date header field
        (using the time the message was received if it is not present, as per
        Section 6.6.1 of [HTTP])"."""
        meta = stored(f"Expires: {http_date(NOW + 600)}", dated=False)
        assert meta.freshness_lifetime == 600
        assert action(meta, NOW + 60) is Action.SERVE

    def test_expires_in_the_past(self) -> None:
        meta = stored(f"Expires: {http_date(NOW - 60)}")
        assert meta.freshness_lifetime == 0
        assert action(meta, NOW + 1) is Action.REVALIDATE

    @pytest.mark.parametrize("expires", ["0", "-1", "never", "Tue, 31 Feb 2023 00:00:00 GMT"])
    def test_an_invalid_expires_means_already_expired(self, expires: str) -> None:
        """RFC 9111 5.3: "A cache recipient MUST interpret invalid date formats,
        especially the value "0", as representing a time in the past (i.e.,
        "already expired")"."""
        meta = stored(f"Expires: {expires}", "Last-Modified: " + http_date(NOW - 10 * DAY))
        assert meta.freshness_lifetime == 0
        assert action(meta, NOW + 1) is Action.REVALIDATE

    def test_heuristic_is_a_tenth_of_the_time_since_last_modified(self) -> None:
        """RFC 9111 4.2.2: "If the response has a Last-Modified header field ...
        caches are encouraged to use a heuristic expiration value that is no more than
        some fraction of the interval since that time. A typical setting of this
        fraction might be 10%"."""
        meta = stored(f"Last-Modified: {http_date(NOW - 1000)}")
        assert meta.freshness_lifetime == 100
        assert action(meta, NOW + 99) is Action.SERVE
        assert action(meta, NOW + 101) is Action.REVALIDATE

    def test_heuristic_is_capped_at_a_day(self) -> None:
        meta = stored(f"Last-Modified: {http_date(NOW - 365 * DAY)}")
        assert meta.freshness_lifetime == HEURISTIC_MAX == DAY

    def test_no_heuristic_when_an_explicit_expiration_is_present(self) -> None:
        """RFC 9111 4.2.2: "A cache MUST NOT use heuristics to determine freshness
        when an explicit expiration time is present in the stored response"."""
        meta = stored(f"Expires: {http_date(NOW + 5)}", f"Last-Modified: {http_date(NOW - DAY)}")
        assert meta.freshness_lifetime == 5

    def test_no_heuristic_without_last_modified(self) -> None:
        assert stored().freshness_lifetime == 0

    def test_a_last_modified_after_date_gives_no_heuristic(self) -> None:
        assert stored(f"Last-Modified: {http_date(NOW + 10)}").freshness_lifetime == 0

    def test_no_heuristic_for_a_status_that_is_not_heuristically_cacheable(self) -> None:
        """RFC 9111 4.2.2: heuristics apply to a status "defined as heuristically
        cacheable" or a response "marked explicitly cacheable (e.g., with a public
        response directive)"."""
        last_modified = f"Last-Modified: {http_date(NOW - 1000)}"
        assert stored(last_modified, status=302).freshness_lifetime == 0
        assert stored(last_modified, "Cache-Control: public", status=302).freshness_lifetime == 100

    def test_negative_caching_of_a_404_uses_the_service_ttl(self) -> None:
        meta = stored(status=404, negative_ttl=30)
        assert meta.freshness_lifetime == 30
        assert action(meta, NOW + 29) is Action.SERVE
        assert action(meta, NOW + 31) is Action.REVALIDATE

    def test_an_explicit_lifetime_on_a_404_beats_the_service_ttl(self) -> None:
        assert (
            stored("Cache-Control: max-age=5", status=404, negative_ttl=30).freshness_lifetime == 5
        )

    def test_freshness_lifetime_directly(self) -> None:
        directives = parse_cache_control("max-age=60")
        assert freshness_lifetime(200, directives, headers()) == 60.0
        assert freshness_lifetime(404, parse_cache_control(None), headers(), negative_ttl=9) == 9.0


# --------------------------------------------------------------------------------------
# RFC 9111 4.2.3: age
# --------------------------------------------------------------------------------------


class TestAge:
    def test_an_age_header_counts_toward_staleness(self) -> None:
        """RFC 9111 4.2.3: "age_value ... is the value of the Age header field"; the
        tier above already held it 50 s."""
        meta = stored("Cache-Control: max-age=60", "Age: 50")
        assert meta.corrected_initial_age == 50
        assert action(meta, NOW + 9) is Action.SERVE
        assert action(meta, NOW + 11) is Action.REVALIDATE

    def test_response_delay_is_added_to_age(self) -> None:
        """RFC 9111 4.2.3: "response_delay = response_time - request_time;
        corrected_age_value = age_value + response_delay"."""
        meta = stored("Cache-Control: max-age=60", "Age: 10", requested_at=NOW - 3)
        assert meta.corrected_initial_age == 13

    def test_apparent_age_from_date(self) -> None:
        """RFC 9111 4.2.3: "apparent_age = max(0, response_time - date_value);
        corrected_initial_age = max(apparent_age, corrected_age_value)"."""
        meta = stored("Cache-Control: max-age=60", f"Date: {http_date(NOW - 20)}", "Age: 5")
        assert meta.corrected_initial_age == 20

    def test_a_date_in_the_future_gives_no_negative_age(self) -> None:
        meta = stored("Cache-Control: max-age=60", f"Date: {http_date(NOW + 500)}")
        assert meta.corrected_initial_age == 0

    @pytest.mark.parametrize("age", ["soon", "1.5", "-7", ""])
    def test_an_invalid_age_does_not_make_the_response_younger(self, age: str) -> None:
        initial = corrected_initial_age(headers(f"Age: {age}"), NOW - 2, NOW)
        assert initial == 2

    def test_current_age_adds_resident_time(self) -> None:
        """RFC 9111 4.2.3: "resident_time = now - response_time; current_age =
        corrected_initial_age + resident_time"."""
        meta = stored("Cache-Control: max-age=60", "Age: 7")
        assert meta.age(NOW + 10) == 17
        assert decide(meta, NOW + 10).age == 17
        assert decide(meta, NOW + 10).ttl == 43
        assert meta.age(NOW - 5) == 7  # a clock stepping back never makes it younger

    def test_object_meta_is_immutable(self) -> None:
        meta = stored("Cache-Control: max-age=60")
        with pytest.raises(dataclasses.FrozenInstanceError):
            meta.freshness_lifetime = 1e9  # type: ignore[misc]


# --------------------------------------------------------------------------------------
# RFC 9111 5.2.2: directives that forbid serving without validation, or stale
# --------------------------------------------------------------------------------------


class TestValidationRequired:
    def test_no_cache_always_revalidates(self) -> None:
        """RFC 9111 5.2.2.4: "The no-cache response directive ... indicates that the
        response MUST NOT be used to satisfy any other request without forwarding it
        for validation and receiving a successful response"."""
        meta = stored("Cache-Control: no-cache, max-age=600, stale-while-revalidate=60")
        assert may_store("Cache-Control: no-cache").storable
        assert action(meta, NOW) is Action.REVALIDATE
        assert action(meta, NOW + 601) is Action.REVALIDATE
        assert not decide(meta, NOW + 601).stale_if_error

    def test_qualified_no_cache_never_reuses_a_listed_field_unvalidated(self) -> None:
        """RFC 9111 5.2.2.4: with no-cache="X-Session", "the listed header fields MUST
        NOT be sent in the response to a subsequent request without successful
        revalidation with the origin server"."""
        meta = stored('Cache-Control: no-cache="X-Session", max-age=600', "X-Session: abc")
        revalidates = action(meta, NOW + 1) is Action.REVALIDATE
        assert revalidates or "x-session" not in names(meta.client_headers)

    @pytest.mark.parametrize(
        "cache_control",
        [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60",
        ],
    )
    def test_must_revalidate_forbids_stale(self, cache_control: str) -> None:
        """RFC 9111 5.2.2.2: "once the response has become stale, a cache MUST NOT
        reuse that response to satisfy another request until it has been successfully
        validated by the origin"; proxy-revalidate says it to shared caches (5.2.2.8)
        and s-maxage "also implies the semantics of the proxy-revalidate" (5.2.2.10)."""
        meta = stored(
            f"Cache-Control: {cache_control}, stale-while-revalidate=60, stale-if-error=600"
        )
        assert action(meta, NOW + 59) is Action.SERVE
        stale = decide(meta, NOW + 61)
        assert stale.action is Action.REVALIDATE
        assert not stale.stale_if_error
        assert not may_serve_stale_on_error(meta, NOW + 61, PurgeVerdict.NONE)

    def test_must_revalidate_forbids_even_a_configured_default_stale_if_error(self) -> None:
        meta = stored("Cache-Control: max-age=60, must-revalidate", default_stale_if_error=600)
        assert not may_serve_stale_on_error(meta, NOW + 61, PurgeVerdict.NONE)


# --------------------------------------------------------------------------------------
# RFC 5861: stale-while-revalidate and stale-if-error
# --------------------------------------------------------------------------------------


class TestStaleWhileRevalidate:
    def test_inside_the_window_serve_stale_and_revalidate(self) -> None:
        """RFC 5861 3: "it indicates that caches MAY serve the response in which it
        appears after it becomes stale, up to the indicated number of seconds"."""
        meta = stored("Cache-Control: max-age=60, stale-while-revalidate=30")
        assert action(meta, NOW + 59) is Action.SERVE
        assert action(meta, NOW + 61) is Action.SERVE_STALE_REVALIDATE
        assert action(meta, NOW + 89) is Action.SERVE_STALE_REVALIDATE

    def test_beyond_the_window_revalidate_first(self) -> None:
        meta = stored("Cache-Control: max-age=60, stale-while-revalidate=30")
        beyond = decide(meta, NOW + 91)
        assert beyond.action is Action.REVALIDATE
        assert beyond.fwd == "stale"
        assert beyond.ttl == -31

    def test_without_the_directive_a_stale_response_is_revalidated(self) -> None:
        """RFC 9111 4.2.4: "A cache MUST NOT generate a stale response unless it is
        disconnected or doing so is explicitly permitted by the client or origin
        server" — at the instant it turns stale, too."""
        meta = stored("Cache-Control: max-age=60")
        assert action(meta, NOW + 60) is Action.REVALIDATE


class TestStaleIfError:
    def test_inside_the_window_a_stale_response_stands_in_for_an_error(self) -> None:
        """RFC 5861 4: "it indicates that when an error is encountered, a cached stale
        response MAY be used to satisfy the request, regardless of other freshness
        information"."""
        meta = stored("Cache-Control: max-age=60, stale-if-error=300")
        stale = decide(meta, NOW + 200)
        assert stale.action is Action.REVALIDATE
        assert stale.stale_if_error
        assert may_serve_stale_on_error(meta, NOW + 359, PurgeVerdict.NONE)
        assert not may_serve_stale_on_error(meta, NOW + 361, PurgeVerdict.NONE)
        assert not decide(meta, NOW + 361).stale_if_error

    def test_the_service_default_applies_when_the_origin_says_nothing(self) -> None:
        meta = stored("Cache-Control: max-age=60", default_stale_if_error=100)
        assert may_serve_stale_on_error(meta, NOW + 159, PurgeVerdict.NONE)
        assert not may_serve_stale_on_error(meta, NOW + 161, PurgeVerdict.NONE)

    def test_the_origin_overrides_the_service_default(self) -> None:
        meta = stored("Cache-Control: max-age=60, stale-if-error=0", default_stale_if_error=100)
        assert not may_serve_stale_on_error(meta, NOW + 61, PurgeVerdict.NONE)

    def test_no_stale_on_error_without_the_directive_or_a_default(self) -> None:
        meta = stored("Cache-Control: max-age=60")
        assert not may_serve_stale_on_error(meta, NOW + 61, PurgeVerdict.NONE)

    def test_a_hard_purged_response_never_stands_in(self) -> None:
        meta = stored("Cache-Control: max-age=60, stale-if-error=300")
        assert not may_serve_stale_on_error(meta, NOW + 1, PurgeVerdict.GONE)

    def test_a_soft_purged_response_stands_in_only_within_its_window(self) -> None:
        """A soft purge makes the object stale now; stale-if-error then counts from
        now, and without it the object may not stand in for an error at all."""
        allowed = stored("Cache-Control: max-age=600, stale-if-error=300")
        assert may_serve_stale_on_error(allowed, NOW + 1, PurgeVerdict.STALE)
        assert decide(allowed, NOW + 1, PurgeVerdict.STALE).stale_if_error
        plain = stored("Cache-Control: max-age=600")
        assert not may_serve_stale_on_error(plain, NOW + 1, PurgeVerdict.STALE)
        assert not decide(plain, NOW + 1, PurgeVerdict.STALE).stale_if_error

    def test_no_cache_forbids_stale_on_error(self) -> None:
        meta = stored("Cache-Control: no-cache, stale-if-error=300")
        assert not may_serve_stale_on_error(meta, NOW + 1, PurgeVerdict.NONE)


# --------------------------------------------------------------------------------------
# Purges and stale-marked fills
# --------------------------------------------------------------------------------------


class TestPurgeVerdicts:
    def test_nothing_stored_is_a_miss(self) -> None:
        assert decide(None, NOW).action is Action.FETCH
        assert decide(None, NOW).fwd == "uri-miss"

    def test_a_hard_purge_is_a_miss(self) -> None:
        meta = stored("Cache-Control: max-age=600")
        gone = decide(meta, NOW + 1, PurgeVerdict.GONE)
        assert gone.action is Action.FETCH
        assert gone.fwd == "miss"

    def test_a_soft_purge_makes_a_fresh_response_stale(self) -> None:
        """A soft purge marks the object stale: it is revalidated before reuse
        unless the origin allowed stale-while-revalidate."""
        meta = stored("Cache-Control: max-age=600")
        assert action(meta, NOW + 1) is Action.SERVE
        assert action(meta, NOW + 1, PurgeVerdict.STALE) is Action.REVALIDATE

    def test_a_soft_purge_serves_stale_within_stale_while_revalidate(self) -> None:
        meta = stored("Cache-Control: max-age=600, stale-while-revalidate=30")
        assert action(meta, NOW + 1, PurgeVerdict.STALE) is Action.SERVE_STALE_REVALIDATE

    def test_a_soft_purge_of_a_must_revalidate_response_revalidates(self) -> None:
        meta = stored("Cache-Control: max-age=600, must-revalidate, stale-while-revalidate=30")
        assert action(meta, NOW + 1, PurgeVerdict.STALE) is Action.REVALIDATE


class TestForceStale:
    def test_a_response_the_tier_above_served_stale_is_stale_here_too(self) -> None:
        meta = stored("Cache-Control: max-age=600", force_stale=True)
        assert meta.freshness_lifetime == 0
        assert action(meta, NOW + 1) is Action.REVALIDATE

    def test_it_may_still_be_served_while_revalidating(self) -> None:
        meta = stored("Cache-Control: max-age=600, stale-while-revalidate=30", force_stale=True)
        assert action(meta, NOW + 10) is Action.SERVE_STALE_REVALIDATE


# --------------------------------------------------------------------------------------
# RFC 9110 7.6.1 hop-by-hop fields; RFC 9111 4.3.4 freshening with a 304
# --------------------------------------------------------------------------------------


class TestHopByHop:
    def test_hop_by_hop_fields_are_removed(self) -> None:
        """RFC 9110 7.6.1: "Intermediaries MUST parse a received Connection header
        field before a message is forwarded and ... remove ... the Connection header
        field itself (or replace it ...)". Keep-Alive, TE, Transfer-Encoding, Upgrade
        and the Proxy-* fields are connection-specific too."""
        received = pairs(
            "Connection: keep-alive",
            "Keep-Alive: timeout=5",
            "Transfer-Encoding: chunked",
            "TE: trailers",
            "Trailer: X-Checksum",
            "Upgrade: h2c",
            "Proxy-Authenticate: Basic",
            "Proxy-Connection: keep-alive",
            "Content-Type: text/html",
            "Cache-Control: max-age=60",
        )
        assert upstream_header_pairs(received) == pairs(
            "Content-Type: text/html", "Cache-Control: max-age=60"
        )

    def test_fields_named_by_connection_are_removed(self) -> None:
        """RFC 9110 7.6.1: "... for each connection-option, remove any header or
        trailer field with the same name as the connection-option"."""
        received = pairs(
            "Connection: close, X-Hop",
            "connection: X-Other",
            "x-hop: 1",
            "X-OTHER: 2",
            "X-End: 3",
        )
        assert upstream_header_pairs(received) == pairs("X-End: 3")


class TestMerge304:
    def test_the_304_updates_stored_fields_but_keeps_the_body_framing(self) -> None:
        """RFC 9111 4.3.4: "the cache MUST use other header fields provided in the 304
        (Not Modified) response to replace all instances of the corresponding header
        fields in the stored response" — except those the stored body depends on
        (RFC 9111 3.2), like Content-Length and Content-Encoding."""
        stored_pairs = pairs(
            "Content-Type: text/plain",
            "Content-Length: 5",
            "Content-Encoding: gzip",
            "Cache-Control: max-age=60",
            'ETag: "v1"',
            "X-Multi: a",
            "X-Multi: b",
        )
        fresh = pairs(
            "Cache-Control: max-age=600",
            "Content-Length: 0",
            "Content-Encoding: br",
            "X-Multi: c",
        )
        merged = CIMultiDict(merge_304_headers(stored_pairs, fresh))
        assert merged["content-length"] == "5"
        assert merged["content-encoding"] == "gzip"
        assert merged["content-type"] == "text/plain"
        assert merged["etag"] == '"v1"'
        assert merged.getall("cache-control") == ["max-age=600"]
        assert merged.getall("x-multi") == ["c"]

    def test_a_stored_response_freshened_by_a_304_is_fresh_again(self) -> None:
        first = stored("Cache-Control: max-age=60", 'ETag: "v1"')
        later = NOW + 100
        assert action(first, later) is Action.REVALIDATE
        merged = merge_304_headers(
            first.upstream_headers,
            pairs(f"Date: {http_date(later)}", "Cache-Control: max-age=60"),
        )
        again = stored(*(f"{name}: {value}" for name, value in merged), at=later)
        assert again.etag == '"v1"'
        assert action(again, later + 59) is Action.SERVE


# --------------------------------------------------------------------------------------
# Hypothesis: no Cache-Control text can make storing raise
# --------------------------------------------------------------------------------------

_DIRECTIVE_WORDS = st.sampled_from(
    [
        "max-age",
        "s-maxage",
        "no-store",
        "no-cache",
        "private",
        "public",
        "must-revalidate",
        "proxy-revalidate",
        "stale-while-revalidate",
        "stale-if-error",
        "immutable",
        "MAX-AGE",
        "x-ext",
        "",
    ]
)
_ARGUMENTS = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=2**70).map(str),
    st.text(max_size=12),
    st.text(max_size=12).map(lambda text: f'"{text}"'),
)
_DIRECTIVE_LISTS = st.lists(
    st.tuples(_DIRECTIVE_WORDS, _ARGUMENTS).map(
        lambda pair: pair[0] if pair[1] is None else f"{pair[0]}={pair[1]}"
    ),
    max_size=6,
).flatmap(lambda members: st.sampled_from([", ", ",", ";", " "]).map(lambda sep: sep.join(members)))
_FIELD_VALUES = st.one_of(st.text(max_size=60), _DIRECTIVE_LISTS)


@given(
    field=st.sampled_from(["Cache-Control", "CDN-Cache-Control", "Surrogate-Control"]),
    value=_FIELD_VALUES,
    status=st.sampled_from([200, 302, 404, 500]),
)
def test_no_cache_control_text_makes_storing_raise(field: str, value: str, status: int) -> None:
    """Whatever the origin writes, storability and build_meta answer, and the numbers
    they produce are usable: a lifetime and allowances that are never negative."""
    response = ((field, value), ("Date", http_date(NOW)), ("Age", value))
    verdict = storability("GET", status, headers(), CIMultiDict(response), negative_ttl=5)
    assert isinstance(verdict.storable, bool)
    meta = build_meta(
        status=status,
        upstream_pairs=response,
        request_time=NOW,
        response_time=NOW,
        stored_at=NOW,
        service="www",
        host="example.com",
        target="/",
        compressible=True,
        negative_ttl=5,
    )
    assert meta.freshness_lifetime >= 0
    assert meta.stale_while_revalidate >= 0
    assert meta.stale_if_error >= 0
    assert meta.corrected_initial_age >= 0
    assert decide(meta, NOW + 1).action in Action
