"""Conditional requests answered from a stored 200 (RFC 9110 13)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.cache.conditional import (
    etag_matches_strong,
    etag_matches_weak,
    evaluate_preconditions,
    if_range_allows,
    parse_etag_list,
)
from edge.cache.dates import format_http_date

LAST_MODIFIED = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
BEFORE = format_http_date(LAST_MODIFIED - 1)
AT = format_http_date(LAST_MODIFIED)
AFTER = format_http_date(LAST_MODIFIED + 1)
ETAG = '"v1"'


def check(
    method: str = "GET",
    etag: str | None = ETAG,
    last_modified: float | None = LAST_MODIFIED,
    **request: str,
) -> int | None:
    headers = CIMultiDict((name.replace("_", "-"), value) for name, value in request.items())
    return evaluate_preconditions(method, headers, etag, last_modified)


class TestEntityTagComparison:
    # RFC 9110 8.8.3.2, the table of examples:
    @pytest.mark.parametrize(
        "a,b,strong,weak",
        [
            ('W/"1"', 'W/"1"', False, True),
            ('W/"1"', 'W/"2"', False, False),
            ('W/"1"', '"1"', False, True),
            ('"1"', '"1"', True, True),
        ],
    )
    def test_the_rfc_table(self, a: str, b: str, strong: bool, weak: bool) -> None:
        assert etag_matches_strong(a, b) is strong
        assert etag_matches_weak(a, b) is weak


class TestEtagLists:
    def test_star_and_lists(self) -> None:
        assert parse_etag_list(" * ") == ["*"]
        assert parse_etag_list('"a", W/"b",  "c"') == ['"a"', 'W/"b"', '"c"']

    def test_an_opaque_tag_may_hold_a_comma(self) -> None:
        assert parse_etag_list('"a,b", "c"') == ['"a,b"', '"c"']

    def test_unquoted_tags_from_non_conforming_origins_are_kept(self) -> None:
        assert parse_etag_list("abc, W/def") == ["abc", "W/def"]

    @pytest.mark.parametrize("value", ['"unterminated', "", " , ", '"a" "b"', 'W/"a"x', "*, *"])
    def test_malformed_lists_are_none(self, value: str) -> None:
        assert parse_etag_list(value) is None

    @given(st.lists(st.sampled_from(list('"W/ ,*\tab'))).map("".join))
    def test_any_list_text_parses_or_is_none(self, value: str) -> None:
        result = parse_etag_list(value)
        assert result is None or all(result)


class TestIfNoneMatch:
    def test_a_match_on_get_or_head_is_304(self) -> None:
        # RFC 9110 13.2.2 step 3: "if false for GET/HEAD, respond 304 (Not Modified)"
        assert check(if_none_match=ETAG) == 304
        assert check("HEAD", if_none_match=ETAG) == 304

    def test_uses_weak_comparison(self) -> None:
        # RFC 9110 13.1.2: "A recipient MUST use the weak comparison function"
        assert check(if_none_match='W/"v1"') == 304
        assert check(etag='W/"v1"', if_none_match='"v1"') == 304

    def test_any_member_of_the_list_matches(self) -> None:
        assert check(if_none_match='"v0", "v1"') == 304

    def test_across_field_lines(self) -> None:
        headers = CIMultiDict([("If-None-Match", '"v0"'), ("If-None-Match", '"v1"')])
        assert evaluate_preconditions("GET", headers, ETAG, None) == 304

    def test_no_match_serves_normally(self) -> None:
        assert check(if_none_match='"v2"') is None

    def test_star_matches_the_stored_representation(self) -> None:
        assert check(if_none_match="*") == 304
        assert check(etag=None, if_none_match="*") == 304

    def test_a_tag_never_matches_a_response_without_etag(self) -> None:
        assert check(etag=None, if_none_match=ETAG) is None

    def test_a_match_on_another_method_is_412(self) -> None:
        assert check("POST", if_none_match=ETAG) == 412

    def test_it_overrides_if_modified_since(self) -> None:
        # RFC 9110 13.1.3: "A recipient MUST ignore If-Modified-Since if the request
        # contains an If-None-Match header field"
        assert check(if_none_match='"v2"', if_modified_since=AFTER) is None

    def test_a_malformed_value_is_ignored(self) -> None:
        assert check(if_none_match='"v1') is None


class TestIfModifiedSince:
    def test_not_modified_since_the_date_is_304(self) -> None:
        assert check(if_modified_since=AT) == 304
        assert check(if_modified_since=AFTER) == 304

    def test_modified_since_the_date_serves_normally(self) -> None:
        assert check(if_modified_since=BEFORE) is None

    def test_ignored_for_methods_other_than_get_and_head(self) -> None:
        assert check("POST", if_modified_since=AFTER) is None
        assert check("HEAD", if_modified_since=AFTER) == 304

    def test_ignored_when_invalid_or_without_last_modified(self) -> None:
        assert check(if_modified_since="yesterday") is None
        assert check(last_modified=None, if_modified_since=AFTER) is None

    def test_ignored_with_more_than_one_member(self) -> None:
        headers = CIMultiDict([("If-Modified-Since", AFTER), ("If-Modified-Since", AFTER)])
        assert evaluate_preconditions("GET", headers, ETAG, LAST_MODIFIED) is None

    def test_accepts_the_obsolete_date_formats(self) -> None:
        assert check(if_modified_since="Sun Nov  6 08:49:37 1994") == 304


class TestIfMatch:
    def test_strong_match_passes_on_to_the_next_step(self) -> None:
        assert check(if_match=ETAG) is None
        assert check(if_match='"v0", "v1"', if_none_match=ETAG) == 304

    def test_no_match_is_412(self) -> None:
        # RFC 9110 13.2.2 step 1: "if false, respond 412 (Precondition Failed)"
        assert check(if_match='"v2"') == 412

    def test_uses_strong_comparison(self) -> None:
        assert check(if_match='W/"v1"') == 412
        assert check(etag='W/"v1"', if_match='W/"v1"') == 412

    def test_star_matches_the_stored_representation(self) -> None:
        assert check(etag=None, if_match="*") is None

    def test_malformed_or_without_etag_fails(self) -> None:
        assert check(if_match='"v1') == 412
        assert check(etag=None, if_match=ETAG) == 412

    def test_is_evaluated_before_if_none_match(self) -> None:
        assert check(if_match='"v2"', if_none_match=ETAG) == 412

    def test_makes_if_unmodified_since_ignored(self) -> None:
        # Step 2 applies only "When If-Match is not present".
        assert check(if_match=ETAG, if_unmodified_since=BEFORE) is None


class TestIfUnmodifiedSince:
    def test_modified_after_the_date_is_412(self) -> None:
        assert check(if_unmodified_since=BEFORE) == 412

    def test_unmodified_passes(self) -> None:
        assert check(if_unmodified_since=AT) is None

    def test_ignored_when_invalid_or_without_last_modified(self) -> None:
        assert check(if_unmodified_since="garbage") is None
        assert check(last_modified=None, if_unmodified_since=BEFORE) is None

    def test_is_evaluated_before_if_none_match(self) -> None:
        assert check(if_unmodified_since=BEFORE, if_none_match=ETAG) == 412


class TestIfRange:
    def test_no_if_range_allows_the_range(self) -> None:
        assert if_range_allows(None, ETAG, LAST_MODIFIED)

    def test_a_strongly_matching_etag_allows_it(self) -> None:
        assert if_range_allows(ETAG, ETAG, LAST_MODIFIED)

    def test_a_weak_or_different_etag_sends_the_whole_body(self) -> None:
        # RFC 9110 13.1.5: "A client MUST NOT generate an If-Range header field
        # containing an entity tag that is marked as weak"; a recipient compares
        # strongly.
        assert not if_range_allows('W/"v1"', ETAG, LAST_MODIFIED)
        assert not if_range_allows(ETAG, 'W/"v1"', LAST_MODIFIED)
        assert not if_range_allows('"v2"', ETAG, LAST_MODIFIED)
        assert not if_range_allows(ETAG, None, LAST_MODIFIED)

    def test_only_an_exact_date_allows_it(self) -> None:
        # "the validator ... is an exact match"
        assert if_range_allows(AT, ETAG, LAST_MODIFIED)
        assert not if_range_allows(AFTER, ETAG, LAST_MODIFIED)
        assert not if_range_allows(BEFORE, ETAG, LAST_MODIFIED)
        assert not if_range_allows(AT, ETAG, None)

    def test_an_invalid_value_sends_the_whole_body(self) -> None:
        assert not if_range_allows("tomorrow", ETAG, LAST_MODIFIED)


PRECONDITION_TEXT = st.lists(st.sampled_from([*list('"W/ ,*\tv1'), AT, AFTER])).map("".join)


@given(
    st.sampled_from(["GET", "HEAD", "POST"]),
    st.dictionaries(
        st.sampled_from(["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"]),
        st.one_of(st.text(), PRECONDITION_TEXT),
    ),
    st.sampled_from([None, ETAG, 'W/"v1"']),
    st.sampled_from([None, LAST_MODIFIED]),
)
def test_preconditions_answer_304_412_or_none(
    method: str, request: dict[str, str], etag: str | None, last_modified: float | None
) -> None:
    result = evaluate_preconditions(method, CIMultiDict(request), etag, last_modified)
    assert result in (None, 304, 412)


@given(st.one_of(st.text(), PRECONDITION_TEXT))
def test_if_range_is_a_yes_or_no(value: str) -> None:
    assert if_range_allows(value, ETAG, LAST_MODIFIED) in (True, False)
