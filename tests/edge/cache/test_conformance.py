"""The conformance items of RFC 9110 / 9111 / 9213 / 8297, one pure test each, in the
RFC's words. Time is a parameter (NOW), nothing sleeps."""

from __future__ import annotations

import pytest

from edge.cache.conditional import (
    etag_matches_strong,
    etag_matches_weak,
    evaluate_preconditions,
)
from edge.cache.directives import parse_cache_control
from edge.cache.encoding import compression_eligible, is_decodable, varies_on_coding
from edge.cache.fields import client_header_pairs, stored_date
from edge.cache.hints import early_hints, forwardable_informational
from edge.cache.model import ObjectMeta
from edge.cache.policy import (
    Action,
    RequestKind,
    apply_request_directives,
    classify_request,
    decide,
)
from edge.cache.storing import age_value, freshness_lifetime
from edge.cache.transitions import (
    NotModified,
    ServeWithoutStoring,
    StoreAndServe,
    UpstreamFailed,
    after_fetch,
    validation_request_fields,
)
from tests.edge.cache.test_policy import NOW, headers, http_date, may_store, pairs, stored


def fetched(status: int, *fields: str, revalidating: bool = False, etag: str | None = None):  # type: ignore[no-untyped-def]
    return after_fetch(
        status,
        headers(),
        headers(f"Date: {http_date(NOW)}", *fields),
        revalidating=revalidating,
        limit=1 << 20,
        close_delimited=False,
        stored_etag=etag,
    )


# -- RFC 9111 5.1: Age ---------------------------------------------------------------
class TestAge:
    def test_a_list_age_counts_by_its_first_member(self) -> None:
        """RFC 9111 5.1: "a cache encountering a message with a list-based Age field
        value SHOULD use the first member of the field value"."""
        meta = stored("Cache-Control: max-age=3600", "Age: 7200, 0")
        assert decide(meta, NOW).action is Action.REVALIDATE
        assert age_value(headers("Age: 7200, 0")) == 7200

    def test_of_two_age_lines_the_first_counts(self) -> None:
        meta = stored("Cache-Control: max-age=3600", "Age: 7200", "Age: 0")
        assert decide(meta, NOW).action is Action.REVALIDATE

    @pytest.mark.parametrize("age", ["abc", "-1", "1.5", "0x10", ""])
    def test_an_invalid_age_never_makes_a_response_fresh(self, age: str) -> None:
        """RFC 9111 5.1: an invalid Age (not a non-negative integer) says nothing of
        the response's age; we take it as not fresh, so it is validated first."""
        meta = stored("Cache-Control: max-age=3600", f"Age: {age}")
        assert age_value(headers(f"Age: {age}")) is None
        assert decide(meta, NOW).action is Action.REVALIDATE

    def test_a_huge_age_is_capped_not_invalid(self) -> None:
        """RFC 9111 1.2.2: delta-seconds too large are taken as 2147483648."""
        assert age_value(headers("Age: " + "9" * 50)) == 2147483648


# -- RFC 9110 6.6.1, RFC 9111 4: Date --------------------------------------------------
def test_a_stored_response_keeps_its_date() -> None:
    """RFC 9110 6.6.1: Date is when the message was generated; a cache sends the
    stored one (RFC 9111 4), replaced only by a 304 or a new response."""
    when = http_date(NOW - 100)
    assert stored_date(pairs(f"Date: {when}"), NOW) == when
    assert stored_date(pairs("Content-Type: text/plain"), NOW - 5) == http_date(NOW - 5)


# -- RFC 9110 15.2, RFC 9111 3, RFC 8297: informational responses ------------------------
class TestInformational:
    @pytest.mark.parametrize("status", [102, 103, 199])
    def test_1xx_are_forwarded(self, status: int) -> None:
        """RFC 9110 15.2: "A proxy MUST forward 1xx responses unless the proxy itself
        requested the generation of the 1xx response"."""
        assert forwardable_informational(status)

    @pytest.mark.parametrize("status", [100, 101, 200])
    def test_100_101_and_finals_are_not(self, status: int) -> None:
        assert not forwardable_informational(status)

    @pytest.mark.parametrize("status", [102, 103])
    def test_1xx_are_never_stored(self, status: int) -> None:
        """RFC 9111 3: "the response status code is final"."""
        assert not may_store("Cache-Control: max-age=60", status=status).storable

    def test_early_hints_take_the_preload_links_of_a_stored_response(self) -> None:
        """RFC 8297 2: a 103 carries Link fields the client may act on early."""
        links = early_hints(
            pairs(
                'Link: </a.css>; rel=preload; as=style, </next>; rel="next"',
                "Link: <https://cdn.example>; rel=preconnect",
                "Content-Type: text/html",
            )
        )
        assert links == ("</a.css>; rel=preload; as=style", "<https://cdn.example>; rel=preconnect")

    def test_early_hints_are_bounded(self) -> None:
        many = ", ".join(f"</{i}.js>; rel=preload" for i in range(100))
        assert len(early_hints(pairs(f"Link: {many}"))) == 16


# -- RFC 9111 4.4: unsafe methods of any name -----------------------------------------
@pytest.mark.parametrize("method", ["M-SEARCH", "PURGE", "PROPPATCH", "CONNECT"])
def test_a_method_not_known_to_be_safe_invalidates(method: str) -> None:
    """RFC 9111 4.4: "in response to an unsafe request method (including methods
    whose safety is unknown)"."""
    assert classify_request(method, headers()) is RequestKind.INVALIDATING


# -- RFC 9110 8.4: content codings ------------------------------------------------------
class TestCodings:
    @pytest.mark.parametrize("coding", ["x-custom", "zstd", "gzip, br", "compress"])
    def test_a_coding_we_do_not_know_is_never_decoded_or_compressed(self, coding: str) -> None:
        """RFC 9110 8.4: a recipient that does not know a coding passes it on as is;
        compressing it again would stack a second coding on it."""
        assert not is_decodable(coding)
        assert not compression_eligible("text/html", coding, 10_000, 256)
        assert not varies_on_coding([coding], coding)

    @pytest.mark.parametrize("coding", ["gzip", "x-gzip", "br", "deflate", "identity"])
    def test_the_codings_we_know_are_decoded(self, coding: str) -> None:
        assert is_decodable(coding)


# -- RFC 9110 12.5.5: Vary: Accept-Encoding only when it applies -------------------------
class TestVaryOnCoding:
    def test_an_identity_body_alone_does_not_vary(self) -> None:
        """RFC 9110 12.5.5: Vary lists what "might influence" the selection; one
        identity body is the same answer for every Accept-Encoding."""
        assert not varies_on_coding(["identity"], "identity")

    def test_stored_variants_vary(self) -> None:
        assert varies_on_coding(["identity", "br", "gzip"], "identity")

    def test_a_coded_body_we_decode_for_some_clients_varies(self) -> None:
        assert varies_on_coding(["gzip"], "gzip")

    def test_a_body_under_the_minimum_size_is_not_compressed(self) -> None:
        """Like nginx's gzip_min_length (by Content-Length)."""
        assert not compression_eligible("text/html", "identity", 100, 256)
        assert compression_eligible("text/html", "identity", 256, 256)
        assert compression_eligible("text/html", "identity", None, 256)
        assert not compression_eligible("image/png", "identity", 10_000, 256)


# -- RFC 9213 2: CDN-Cache-Control -------------------------------------------------------
def test_cdn_cache_control_goes_on_surrogate_control_does_not() -> None:
    """RFC 9213 2: CDN-Cache-Control targets every CDN on the path (a CDN in front of
    ours too); Surrogate-Control is consumed by the surrogate (Edge Architecture)."""
    kept = client_header_pairs(
        pairs("CDN-Cache-Control: max-age=60", "Surrogate-Control: max-age=60")
    )
    assert kept == (("CDN-Cache-Control", "max-age=60"),)


# -- RFC 9111 3, RFC 9110 15.1: statuses -----------------------------------------------
class TestStatuses:
    @pytest.mark.parametrize("status", [201, 202, 302, 307, 400, 403, 409, 418, 500, 503, 599])
    def test_any_final_status_with_explicit_freshness_is_storable(self, status: int) -> None:
        """RFC 9111 3: storable when "the response status code is final" and it has
        max-age, s-maxage, Expires or public (heuristically cacheable or not)."""
        assert may_store("Cache-Control: max-age=60", status=status).storable

    def test_an_error_status_with_explicit_freshness_is_stored_without_a_stale_copy(
        self,
    ) -> None:
        assert fetched(503, "Cache-Control: max-age=60") == StoreAndServe(())
        # with a stale copy, RFC 5861 stale-if-error has its say first
        assert fetched(503, "Cache-Control: max-age=60", revalidating=True) == UpstreamFailed(503)
        # not storable, or no explicit freshness: an error, relayed as one
        assert fetched(503, "Cache-Control: no-store, max-age=60") == UpstreamFailed(503)
        assert fetched(500, f"Last-Modified: {http_date(NOW - 1000)}") == UpstreamFailed(500)

    @pytest.mark.parametrize("status", [404, 405, 410, 414, 501, 204, 300, 301, 308])
    def test_heuristically_cacheable_codes_get_a_heuristic_from_last_modified(
        self, status: int
    ) -> None:
        """RFC 9110 15.1 lists them; RFC 9111 4.2.2: a heuristic may use Last-Modified
        (10% of the time since)."""
        lm = f"Last-Modified: {http_date(NOW - 1000)}"
        assert may_store(lm, status=status).storable
        meta = stored(lm, status=status)
        assert meta.freshness_lifetime == pytest.approx(100)

    def test_a_404_with_nothing_to_go_on_needs_negative_caching(self) -> None:
        assert not may_store(status=404).storable

    def test_heuristics_with_credentials_need_explicit_freshness(self) -> None:
        """The hardening rule: a credentialed answer is stored on explicit freshness."""
        lm = f"Last-Modified: {http_date(NOW - 1000)}"
        assert not may_store(lm, status=404, request=("Cookie: s=1",)).storable


# -- RFC 9111 5.2.2.3 must-understand, 5.2.2.4 qualified no-cache ------------------------
class TestResponseDirectives:
    def test_must_understand_overrides_no_store_for_a_status_we_understand(self) -> None:
        """RFC 9111 5.2.2.3: "a cache that understands and conforms to the
        requirements of that status code" may store it, no-store notwithstanding."""
        cc = "Cache-Control: must-understand, no-store, max-age=60"
        assert may_store(cc, status=200).storable
        assert not may_store(cc, status=299).storable

    def test_qualified_no_cache_drops_its_fields_from_a_reuse(self) -> None:
        """RFC 9111 5.2.2.4: the listed fields "MUST NOT be sent in the response to a
        subsequent request without successful revalidation"; the rest may be reused."""
        meta = stored('Cache-Control: max-age=60, no-cache="Set-Cookie"', "Set-Cookie: a=1")
        assert decide(meta, NOW + 1).action is Action.SERVE
        assert "set-cookie" not in {n.lower() for n, _ in meta.client_headers}
        assert meta.no_cache_fields == ("set-cookie",)


# -- RFC 9111 3.5: Authorization --------------------------------------------------------
class TestAuthorization:
    @pytest.mark.parametrize(
        "cc", ["public, max-age=60", "s-maxage=60", "must-revalidate, max-age=60"]
    )
    def test_shareable_answers_to_authorized_requests_are_stored_and_reused(self, cc: str) -> None:
        """RFC 9111 3.5: unless the response has public, s-maxage or must-revalidate."""
        auth = ("Authorization: Basic eDp5",)
        fields = (f"Cache-Control: {cc}", f"Last-Modified: {http_date(NOW - 1000)}")
        assert may_store(*fields, request=auth).storable
        meta = stored(*fields)
        assert decide(meta, NOW + 1, authorization=True).action is not Action.FETCH

    def test_other_answers_are_not_reused_for_them(self) -> None:
        meta = stored("Cache-Control: max-age=60")
        assert not may_store("Cache-Control: max-age=60", request=("Authorization: x",)).storable
        assert decide(meta, NOW + 1, authorization=True).action is Action.FETCH
        assert decide(meta, NOW + 1).action is Action.SERVE


# -- RFC 9111 5.2.1: request directives (behind honor_request_cache_control) ------------
class TestRequestDirectives:
    meta = stored("Cache-Control: max-age=100")

    def decided(self, cc: str, at: float) -> Action:
        decision = decide(self.meta, at)
        return apply_request_directives(decision, self.meta, parse_cache_control(cc)).action

    def test_no_cache_validates(self) -> None:
        """RFC 9111 5.2.1.4: "the client prefers that a stored response not be used
        to satisfy the request without successful validation"."""
        assert self.decided("no-cache", NOW + 1) is Action.REVALIDATE

    def test_max_age_validates_an_older_response(self) -> None:
        """RFC 9111 5.2.1.1: "the client prefers a response whose age is less than or
        equal to the specified number of seconds"."""
        assert self.decided("max-age=10", NOW + 20) is Action.REVALIDATE
        assert self.decided("max-age=30", NOW + 20) is Action.SERVE

    def test_min_fresh_wants_that_much_freshness_left(self) -> None:
        """RFC 9111 5.2.1.3."""
        assert self.decided("min-fresh=50", NOW + 60) is Action.REVALIDATE
        assert self.decided("min-fresh=50", NOW + 10) is Action.SERVE

    def test_max_stale_accepts_a_stale_response(self) -> None:
        """RFC 9111 5.2.1.2: "the client will accept a response that has exceeded its
        freshness lifetime by no more than the specified number of seconds"."""
        assert self.decided("max-stale=60", NOW + 130) is Action.SERVE
        assert self.decided("max-stale=10", NOW + 130) is Action.REVALIDATE

    def test_max_stale_never_overrides_must_revalidate(self) -> None:
        """RFC 9111 5.2.2.2: must-revalidate: never used stale."""
        meta = stored("Cache-Control: max-age=100, must-revalidate")
        decision = apply_request_directives(
            decide(meta, NOW + 130), meta, parse_cache_control("max-stale=600")
        )
        assert decision.action is Action.REVALIDATE


# -- RFC 9111 4.3.2 validator merging, 4.3.4 which stored response a 304 updates --------
class TestValidation:
    def test_the_clients_entity_tags_are_merged_with_ours(self) -> None:
        """RFC 9111 4.3.2: the cache "MAY combine the received list with a list of
        entity tags from its own stored set of responses"."""
        merged = validation_request_fields(
            '"v1"', http_date(NOW), headers('If-None-Match: "v2", W/"v3", bogus')
        )
        assert merged == {
            "If-None-Match": '"v1", "v2", W/"v3"',
            "If-Modified-Since": http_date(NOW),
        }

    def test_a_304_for_our_tag_freshens_one_for_the_clients_passes(self) -> None:
        """RFC 9111 4.3.4: a 304's strong validator selects the stored responses to
        update; none match, none are updated (so it is the client's answer)."""
        assert fetched(304, 'ETag: "v1"', revalidating=True, etag='"v1"') == NotModified()
        assert fetched(304, 'ETag: "v2"', revalidating=True, etag='"v1"') == (
            ServeWithoutStoring("not-modified-for-client")
        )


# -- RFC 9110 8.8.3: entity-tag comparison ----------------------------------------------
class TestEntityTags:
    def test_weak_and_strong_comparison_table(self) -> None:
        """RFC 9110 8.8.3.2's table."""
        assert not etag_matches_strong('W/"1"', 'W/"1"') and etag_matches_weak('W/"1"', 'W/"1"')
        assert not etag_matches_strong('W/"1"', 'W/"2"') and not etag_matches_weak('W/"1"', 'W/"2"')
        assert not etag_matches_strong('W/"1"', '"1"') and etag_matches_weak('W/"1"', '"1"')
        assert etag_matches_strong('"1"', '"1"') and etag_matches_weak('"1"', '"1"')

    @pytest.mark.parametrize("tag", ["abc", 'w/"abc"', 'W"abc"', '"ab"c"', '"a b"'])
    def test_what_is_not_an_entity_tag_matches_nothing(self, tag: str) -> None:
        """RFC 9110 8.8.3: entity-tag = [ weak ] opaque-tag; weak = %s"W/" (case-
        sensitive); opaque-tag = DQUOTE *etagc DQUOTE."""
        assert not etag_matches_weak(tag, '"abc"')
        assert not etag_matches_weak(tag, tag)
        assert (
            evaluate_preconditions("GET", headers(f"If-None-Match: {tag}"), '"abc"', None) is None
        )

    def test_obs_text_is_an_etag_character(self) -> None:
        tag = '"caf\u00e9"'
        assert etag_matches_strong(tag, tag)

    def test_if_modified_since_is_ignored_without_a_stored_last_modified(self) -> None:
        """RFC 9110 13.1.3: the comparison needs the representation's modification
        date; with none stored, no 304 is made from a date."""
        ims = headers(f"If-Modified-Since: {http_date(NOW)}")
        assert evaluate_preconditions("GET", ims, None, None) is None
        assert evaluate_preconditions("GET", ims, None, NOW - 10) == 304


def test_explicit_freshness_outranks_a_heuristic() -> None:
    """RFC 9111 4.2.2: "a cache MUST NOT use heuristics to determine freshness when an
    explicit expiration time is present"."""
    h = headers("Cache-Control: max-age=5", f"Last-Modified: {http_date(NOW - 1000)}")
    assert freshness_lifetime(200, parse_cache_control("max-age=5"), h) == 5


def test_a_row_stored_before_the_new_fields_unpickles_with_their_defaults() -> None:
    """Objects stored by an earlier release lack no_cache_fields and authorized_reuse;
    they read as the defaults (the conservative ones), not as missing attributes."""
    import pickle

    meta = stored("Cache-Control: max-age=60")
    old_state = meta.__getstate__()[:-2]  # type: ignore[attr-defined]
    old = ObjectMeta.__new__(ObjectMeta)
    old.__setstate__(old_state)
    assert old.no_cache_fields == () and old.authorized_reuse is False
    assert pickle.loads(pickle.dumps(meta)) == meta


def test_a_head_miss_is_filled_by_a_get() -> None:
    """RFC 9110 9.3.2: HEAD is GET without content, so a HEAD is answered from a stored
    GET; RFC 9111 4.3.5 lets a cache send HEAD upstream and update the GET from its
    answer (a MAY). We fill a HEAD miss with a GET instead, as Fastly, Varnish and
    nginx (proxy_cache_convert_head) do, so only answers to GET are ever stored."""
    assert classify_request("HEAD", headers()) is RequestKind.CACHEABLE
    assert not may_store("Cache-Control: max-age=60", method="HEAD").storable
    assert may_store("Cache-Control: max-age=60", method="GET").storable
