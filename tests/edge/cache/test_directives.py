"""Cache-Control (RFC 9111 5.2) and the targeted fields this CDN obeys (RFC 9213)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.cache.directives import (
    EMPTY,
    MAX_DELTA_SECONDS,
    TARGETED_FIELDS,
    CacheControl,
    effective_directives,
    parse_cache_control,
    parse_cdn_cache_control,
    parse_surrogate_control,
)
from edge.cache.fields import CLIENT_OMITTED
from edge.cache.structured import Member, Token, parse_dictionary


def cc(value: str | None) -> CacheControl:
    return parse_cache_control(value)


class TestResponseDirectives:
    def test_absent_or_empty_field_has_no_directives(self) -> None:
        assert cc(None) == EMPTY
        assert cc("") == EMPTY
        assert cc(" , ,, ") == EMPTY

    def test_every_boolean_directive(self) -> None:
        parsed = cc(
            "no-store, no-cache, private, public, must-revalidate, proxy-revalidate, "
            "immutable, no-transform, only-if-cached"
        )
        assert parsed == CacheControl(
            no_store=True,
            no_cache=True,
            private=True,
            public=True,
            must_revalidate=True,
            proxy_revalidate=True,
            immutable=True,
            no_transform=True,
            only_if_cached=True,
        )

    def test_every_delta_seconds_directive(self) -> None:
        parsed = cc(
            "max-age=60, s-maxage=120, stale-while-revalidate=30, stale-if-error=600, "
            "min-fresh=5, max-stale=10"
        )
        assert parsed == CacheControl(
            max_age=60,
            s_maxage=120,
            stale_while_revalidate=30,
            stale_if_error=600,
            min_fresh=5,
            max_stale=10,
        )

    def test_directive_names_are_case_insensitive(self) -> None:
        # "Cache directives are identified by a token, to be compared case-insensitively"
        assert cc("Max-Age=60, NO-STORE") == CacheControl(max_age=60, no_store=True)

    def test_arguments_are_accepted_quoted_as_well_as_as_tokens(self) -> None:
        # "recipients ought to accept both forms, even if a specific form is required"
        assert cc('max-age="60"').max_age == 60

    def test_ows_around_members_and_arguments_is_ignored(self) -> None:
        assert cc(" \tmax-age = 60 ,\tpublic ") == CacheControl(max_age=60, public=True)

    def test_unknown_directives_are_ignored(self) -> None:
        # "A cache MUST ignore unrecognized cache directives."
        assert cc('community="UCI", max-age=5, foo=bar') == CacheControl(max_age=5)

    def test_qualified_no_cache_lists_lowercased_field_names(self) -> None:
        parsed = cc('no-cache="Set-Cookie, X-Debug", max-age=60')
        assert parsed.no_cache is False
        assert parsed.no_cache_fields == ("set-cookie", "x-debug")

    def test_qualified_private_lists_field_names_and_commas_inside_quotes_do_not_split(
        self,
    ) -> None:
        parsed = cc('private="Authorization,Set-Cookie", s-maxage=5')
        assert (parsed.private, parsed.private_fields, parsed.s_maxage) == (
            False,
            ("authorization", "set-cookie"),
            5,
        )

    def test_qualified_directive_with_an_empty_list_counts_as_unqualified(self) -> None:
        assert cc('no-cache=""').no_cache is True
        assert cc('private=""').private is True

    def test_bare_and_qualified_forms_together_the_bare_one_wins(self) -> None:
        parsed = cc('private="X-A", private, no-cache, no-cache="X-B"')
        assert (parsed.private, parsed.private_fields) == (True, ())
        assert (parsed.no_cache, parsed.no_cache_fields) == (True, ())


class TestInvalidValues:
    @pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "6 0", "\u0666\u0660"])
    def test_invalid_max_age_and_s_maxage_mean_stale(self, value: str) -> None:
        # RFC 9111 4.2.1: "caches are encouraged to consider responses that have
        # invalid freshness information to be stale."
        assert cc(f"max-age={value}").max_age == 0
        assert cc(f"s-maxage={value}").s_maxage == 0

    def test_max_age_without_an_argument_is_invalid_and_stale(self) -> None:
        assert cc("max-age").max_age == 0

    @pytest.mark.parametrize(
        "name,attr",
        [
            ("stale-while-revalidate", "stale_while_revalidate"),
            ("stale-if-error", "stale_if_error"),
            ("min-fresh", "min_fresh"),
            ("max-stale", "max_stale"),
        ],
    )
    def test_other_invalid_numbers_are_ignored(self, name: str, attr: str) -> None:
        assert getattr(cc(f"{name}=abc"), attr) is None
        assert getattr(cc(f"{name}=-5"), attr) is None

    def test_numbers_beyond_2_to_the_31_are_clamped(self) -> None:
        # RFC 9111 1.2.2: "a recipient ... MUST use the value 2147483648 (2^31)".
        assert cc("max-age=2147483648").max_age == MAX_DELTA_SECONDS
        assert cc("max-age=99999999999999999999").max_age == MAX_DELTA_SECONDS
        assert cc("s-maxage=" + "9" * 10_000).s_maxage == MAX_DELTA_SECONDS
        assert cc("max-age=2147483647").max_age == 2147483647

    def test_leading_zeros_are_digits_like_any_other(self) -> None:
        assert cc("max-age=00060").max_age == 60
        assert cc("max-age=000000000000000000007").max_age == 7

    def test_bare_max_stale_accepts_any_staleness(self) -> None:
        # RFC 9111 5.2.1.2: "If no value is assigned to max-stale, then the client
        # will accept a stale response of any age."
        assert cc("max-stale").max_stale == MAX_DELTA_SECONDS


class TestDuplicates:
    # RFC 9111 4.2.1: "When there is more than one value present for a given
    # directive (e.g., two Expires header field lines or multiple Cache-Control:
    # max-age directives), either the first occurrence should be used or the
    # response should be considered stale." We take the most restrictive value.

    def test_the_smallest_lifetime_wins(self) -> None:
        assert cc("max-age=600, max-age=60").max_age == 60
        assert cc("max-age=60, max-age=600").max_age == 60
        assert cc("s-maxage=10, s-maxage=5").s_maxage == 5

    def test_an_invalid_duplicate_makes_the_response_stale(self) -> None:
        assert cc("max-age=60, max-age=abc").max_age == 0

    def test_the_smallest_staleness_allowance_wins(self) -> None:
        assert cc("stale-while-revalidate=60, stale-while-revalidate=5").stale_while_revalidate == 5
        assert cc("stale-if-error=5, stale-if-error=60").stale_if_error == 5
        assert cc("max-stale, max-stale=10").max_stale == 10

    def test_the_largest_min_fresh_wins(self) -> None:
        assert cc("min-fresh=5, min-fresh=50").min_fresh == 50

    def test_field_lists_accumulate_without_repeats(self) -> None:
        assert cc('no-cache="a", no-cache="B, a"').no_cache_fields == ("a", "b")


class TestFieldLineBoundaries:
    VALUE = 'max-age=60, no-cache="Set-Cookie, X-A", s-maxage=5, stale-if-error=9, public'

    def test_any_split_between_members_into_field_lines_means_the_same(self) -> None:
        # RFC 9110 5.3: several field lines are one list joined by commas.
        members = ["max-age=60", 'no-cache="Set-Cookie, X-A"', "s-maxage=5", "stale-if-error=9"]
        members.append("public")
        whole = cc(self.VALUE)
        for cut in range(1, len(members)):
            headers = CIMultiDict(
                [
                    ("Cache-Control", ", ".join(members[:cut])),
                    ("Cache-Control", ", ".join(members[cut:])),
                ]
            )
            assert effective_directives(headers) == (whole, "cache-control")

    def test_every_prefix_parses_without_error(self) -> None:
        for cut in range(len(self.VALUE) + 1):
            assert isinstance(cc(self.VALUE[:cut]), CacheControl)

    def test_an_unterminated_quote_swallows_the_rest_of_the_field(self) -> None:
        parsed = cc('no-cache="Set-Cookie, max-age=60')
        assert parsed.max_age is None
        assert parsed.no_cache_fields


class TestCdnCacheControl:
    def test_a_dictionary_of_known_directives(self) -> None:
        parsed = parse_cdn_cache_control("max-age=60, stale-while-revalidate=30, must-revalidate")
        assert parsed == CacheControl(max_age=60, stale_while_revalidate=30, must_revalidate=True)

    def test_keys_must_be_lowercase_so_the_whole_field_fails(self) -> None:
        # RFC 8941 4.2: a parse failure ignores the entire field.
        assert parse_cdn_cache_control("Max-Age=60") is None

    @pytest.mark.parametrize(
        "value", ["", "  ", "max-age=60,", "max-age=", 'private="unterminated', "max-age=60 x"]
    )
    def test_empty_or_unparsable_values_are_none(self, value: str) -> None:
        assert parse_cdn_cache_control(value) is None

    def test_values_of_the_wrong_type_are_not_consumed(self) -> None:
        # RFC 9213 2.1: "Implementations SHOULD NOT consume values that violate
        # these inferred constraints" (e.g. a decimal max-age).
        assert parse_cdn_cache_control('max-age=1.5, s-maxage="5", no-store') == CacheControl(
            no_store=True
        )

    def test_a_false_boolean_turns_the_directive_off(self) -> None:
        assert parse_cdn_cache_control("no-store=?0, max-age=5") == CacheControl(max_age=5)

    def test_qualified_private_as_a_string_or_an_inner_list(self) -> None:
        assert parse_cdn_cache_control('private="set-cookie"') == CacheControl(
            private_fields=("set-cookie",)
        )
        assert parse_cdn_cache_control('no-cache=("X-A" "x-b")') == CacheControl(
            no_cache_fields=("x-a", "x-b")
        )

    def test_a_repeated_key_overwrites_as_structured_fields_require(self) -> None:
        assert parse_cdn_cache_control("max-age=5, max-age=60") == CacheControl(max_age=60)

    def test_unknown_members_leave_a_valid_field_with_no_directives(self) -> None:
        # RFC 9213 3.1's example: `CDN-Cache-Control: none` keeps CDNs from obeying
        # a Cache-Control: no-store meant for other caches.
        assert parse_cdn_cache_control("none") == EMPTY


class TestSurrogateControl:
    def test_reads_the_four_directives_a_cdn_honours(self) -> None:
        parsed = parse_surrogate_control(
            "max-age=60, no-store, stale-while-revalidate=5, stale-if-error=9, public"
        )
        assert parsed == CacheControl(
            max_age=60, no_store=True, stale_while_revalidate=5, stale_if_error=9
        )

    def test_max_age_with_an_extension_takes_the_freshness(self) -> None:
        assert parse_surrogate_control("max-age=60+30") == CacheControl(max_age=60)

    def test_a_field_without_those_directives_is_not_used(self) -> None:
        assert parse_surrogate_control('content="ESI/1.0"') is None
        assert parse_surrogate_control(None) is None


class TestEffectiveDirectives:
    def test_cache_control_alone(self) -> None:
        headers = CIMultiDict({"Cache-Control": "max-age=60"})
        assert effective_directives(headers) == (CacheControl(max_age=60), "cache-control")

    def test_no_fields_at_all(self) -> None:
        assert effective_directives(CIMultiDict()) == (EMPTY, "cache-control")

    def test_cdn_cache_control_overrides_cache_control_for_this_cache(self) -> None:
        # RFC 9213 2.2: the cache "MUST ignore the Cache-Control and Expires header
        # fields in that response".
        headers = CIMultiDict(
            {
                "Cache-Control": "no-store",
                "CDN-Cache-Control": "max-age=600",
                "Surrogate-Control": "max-age=5",
            }
        )
        assert effective_directives(headers) == (CacheControl(max_age=600), "cdn-cache-control")

    def test_an_invalid_cdn_cache_control_falls_back_to_the_next_field(self) -> None:
        headers = CIMultiDict({"Cache-Control": "max-age=1", "CDN-Cache-Control": "Max-Age=600"})
        assert effective_directives(headers) == (CacheControl(max_age=1), "cache-control")
        headers["Surrogate-Control"] = "max-age=30"
        assert effective_directives(headers) == (CacheControl(max_age=30), "surrogate-control")

    def test_cdn_cache_control_lines_form_one_dictionary(self) -> None:
        headers = CIMultiDict(
            [("CDN-Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")]
        )
        assert effective_directives(headers) == (
            CacheControl(max_age=60, no_store=True),
            "cdn-cache-control",
        )

    def test_surrogate_control_overrides_cache_control(self) -> None:
        headers = CIMultiDict({"Cache-Control": "private", "Surrogate-Control": "max-age=60"})
        assert effective_directives(headers) == (CacheControl(max_age=60), "surrogate-control")

    def test_the_target_list_is_our_own_field_then_the_shared_ones(self) -> None:
        assert TARGETED_FIELDS == (
            "edgeshield-cdn-cache-control",
            "cdn-cache-control",
            "surrogate-control",
        )

    def test_our_own_targeted_field_is_obeyed_before_cdn_cache_control(self) -> None:
        # RFC 9213 2: a CDN may define its own targeted field, read first
        headers = CIMultiDict(
            [
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=5"),
                ("Edgeshield-CDN-Cache-Control", "max-age=600"),
            ]
        )
        assert effective_directives(headers) == (
            CacheControl(max_age=600),
            "edgeshield-cdn-cache-control",
        )

    def test_our_own_field_is_never_sent_to_clients_and_cdn_cache_control_is(self) -> None:
        assert "edgeshield-cdn-cache-control" in CLIENT_OMITTED
        assert "cdn-cache-control" not in CLIENT_OMITTED


class TestStructuredDictionary:
    def test_items_inner_lists_and_parameters(self) -> None:
        parsed = parse_dictionary('a=1, b="x\\"y";p=?0, c=(t1 2.5);q, d=:aGk=:, e=-3, f=*tok/1')
        assert parsed == {
            "a": Member(1, {}),
            "b": Member('x"y', {"p": False}),
            "c": Member(((Token("t1"), {}), (2.5, {})), {"q": True}),
            "d": Member(b"hi", {}),
            "e": Member(-3, {}),
            "f": Member(Token("*tok/1"), {}),
        }
        assert isinstance(parsed["f"].value, Token)

    @pytest.mark.parametrize(
        "value",
        [
            "A=1",
            "a=1,,b=2",
            "a=1234567890123456",  # integers have at most 15 digits
            "a=1.2345",  # decimals have at most 3 fractional digits
            "a=?2",
            'a="\\n"',
            "a=:not base64!:",
            "a=(1 2",
            "a=1;B=2",
            "a=é",
        ],
    )
    def test_invalid_dictionaries_fail_as_a_whole(self, value: str) -> None:
        assert parse_dictionary(value) is None


DIRECTIVE_ALPHABET = st.sampled_from(
    [*list('=,;"\\ \t-?:()*.'), "max-age", "s-maxage", "no-cache", "private", "9", "0", "a"]
)


@given(st.text())
def test_any_cache_control_text_parses(value: str) -> None:
    assert isinstance(parse_cache_control(value), CacheControl)


@given(st.lists(DIRECTIVE_ALPHABET).map("".join))
def test_directive_shaped_text_parses_to_valid_values(value: str) -> None:
    parsed = parse_cache_control(value)
    for item in dataclasses.fields(parsed):
        number = getattr(parsed, item.name)
        if isinstance(number, int) and not isinstance(number, bool):
            assert 0 <= number <= MAX_DELTA_SECONDS


@given(st.one_of(st.text(), st.lists(DIRECTIVE_ALPHABET).map("".join)))
def test_any_targeted_field_text_parses_or_is_none(value: str) -> None:
    for parser in (parse_cdn_cache_control, parse_surrogate_control):
        result = parser(value)
        assert result is None or isinstance(result, CacheControl)
