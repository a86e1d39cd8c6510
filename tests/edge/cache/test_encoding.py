"""Accept-Encoding (RFC 9110 12.5.3): q-values, our preference, what is compressible."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.cache.encoding import (
    choose_encoding,
    is_compressible,
    normalize_accept_encoding,
    parse_accept_encoding,
)

ALL = ("identity", "gzip", "br")


class TestParse:
    def test_members_with_and_without_weights(self) -> None:
        assert parse_accept_encoding("gzip, br;q=0.8, *;q=0") == {"gzip": 1.0, "br": 0.8, "*": 0.0}

    def test_codings_and_the_q_parameter_are_case_insensitive(self) -> None:
        assert parse_accept_encoding("GZip;Q=0.5") == {"gzip": 0.5}

    def test_x_gzip_is_gzip(self) -> None:
        # RFC 9110 8.4.1.3: "A recipient SHOULD consider "x-gzip" to be equivalent
        # to "gzip"."
        assert parse_accept_encoding("x-gzip") == {"gzip": 1.0}

    @pytest.mark.parametrize("q", ["2", "1.5", "1.0001", "0.1234", "-1", "abc", "", ".5", "1."])
    def test_a_member_with_an_invalid_weight_is_ignored(self, q: str) -> None:
        valid = {"1.": 1.0}
        assert parse_accept_encoding(f"br;q={q}, gzip") == (
            {"br": valid[q], "gzip": 1.0} if q in valid else {"gzip": 1.0}
        )

    def test_the_boundaries_of_qvalue(self) -> None:
        # qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
        assert parse_accept_encoding("a;q=0, b;q=0.001, c;q=0.999, d;q=1.000, e;q=1") == {
            "a": 0.0,
            "b": 0.001,
            "c": 0.999,
            "d": 1.0,
            "e": 1.0,
        }

    def test_empty_or_absent_field_has_no_members(self) -> None:
        assert parse_accept_encoding("") == {}
        assert parse_accept_encoding(None) == {}
        assert parse_accept_encoding(" , ") == {}

    def test_the_first_of_repeated_codings_counts(self) -> None:
        assert parse_accept_encoding("gzip;q=0.2, gzip") == {"gzip": 0.2}

    def test_a_member_that_is_not_a_token_is_ignored(self) -> None:
        assert parse_accept_encoding('"gzip", br') == {"br": 1.0}


class TestChoose:
    def test_no_header_gets_identity(self) -> None:
        assert choose_encoding(None, ALL) == "identity"

    def test_no_header_without_identity_gets_the_first_available(self) -> None:
        assert choose_encoding(None, ["gzip", "br"]) == "gzip"

    def test_nothing_available_is_none(self) -> None:
        assert choose_encoding("gzip", []) is None
        assert choose_encoding(None, []) is None

    def test_equal_weights_prefer_br_then_gzip_then_identity(self) -> None:
        assert choose_encoding("gzip, br, identity", ALL) == "br"
        assert choose_encoding("gzip, identity", ALL) == "gzip"
        assert choose_encoding("*", ALL) == "br"

    def test_a_higher_q_beats_our_preference(self) -> None:
        assert choose_encoding("br;q=0.5, gzip", ALL) == "gzip"
        assert choose_encoding("br;q=0.5, gzip;q=0.4, identity", ALL) == "identity"

    def test_identity_not_named_is_acceptable_but_last(self) -> None:
        # "If the representation has no content coding, then it is acceptable by
        # default unless specifically excluded"
        assert choose_encoding("gzip;q=0.1", ALL) == "gzip"
        assert choose_encoding("deflate", ALL) == "identity"
        assert choose_encoding("", ALL) == "identity"

    def test_identity_excluded_by_identity_q0_or_star_q0(self) -> None:
        assert choose_encoding("identity;q=0", ["identity"]) is None
        assert choose_encoding("*;q=0", ["identity"]) is None
        assert choose_encoding("*;q=0, identity", ["identity"]) == "identity"
        assert choose_encoding("br, *;q=0", ALL) == "br"

    def test_q0_excludes_a_coding(self) -> None:
        assert choose_encoding("br;q=0, gzip;q=0.1", ALL) == "gzip"
        assert choose_encoding("br;q=0", ["br"]) is None

    def test_star_covers_codings_not_named(self) -> None:
        assert choose_encoding("gzip;q=0.1, *;q=0.5", ALL) == "br"

    def test_a_coding_the_client_does_not_name_is_not_sent(self) -> None:
        assert choose_encoding("gzip", ["br"]) is None

    def test_names_compare_case_insensitively_and_come_back_as_given(self) -> None:
        assert choose_encoding("GZIP", ["Gzip", "identity"]) == "Gzip"
        assert choose_encoding("x-gzip", ["gzip"]) == "gzip"


class TestNormalize:
    @pytest.mark.parametrize(
        "value,expected",
        [
            (None, ""),
            ("", ""),
            ("identity", ""),
            ("gzip", "gzip"),
            ("gzip, deflate, br", "br,gzip"),
            ("br;q=0.1, gzip;q=1.0", "br,gzip"),
            ("gzip, deflate, br, zstd", "br,gzip"),
            ("*", "br,gzip"),
            ("*;q=0, br", "br"),
            ("br;q=0, *", "gzip"),
            ("x-gzip", "gzip"),
            ("deflate", ""),
        ],
    )
    def test_what_we_can_produce_that_the_client_accepts(
        self, value: str | None, expected: str
    ) -> None:
        assert normalize_accept_encoding(value) == expected

    def test_equivalent_headers_normalise_alike(self) -> None:
        assert normalize_accept_encoding("gzip,br") == normalize_accept_encoding(
            "BR ;q=1, gzip;q=0.9, deflate"
        )


class TestCompressible:
    @pytest.mark.parametrize(
        "content_type",
        [
            "text/html; charset=utf-8",
            "text/css",
            "text/plain",
            "TEXT/JavaScript",
            "application/json",
            "application/ld+json",
            "application/problem+json",
            "application/javascript",
            "application/xml",
            "application/rss+xml",
            "image/svg+xml",
            "application/wasm",
            "font/ttf",
            "font/otf",
            "application/vnd.ms-fontobject",
            "image/x-icon",
        ],
    )
    def test_text_like_types_are_compressible(self, content_type: str) -> None:
        assert is_compressible(content_type)

    @pytest.mark.parametrize(
        "content_type",
        [
            None,
            "",
            "image/png",
            "image/jpeg",
            "image/webp",
            "video/mp4",
            "audio/mpeg",
            "application/zip",
            "application/gzip",
            "application/octet-stream",
            "font/woff2",
            "text/event-stream",
        ],
    )
    def test_compressed_binary_and_streamed_types_are_not(self, content_type: str | None) -> None:
        assert not is_compressible(content_type)


AE_ALPHABET = st.sampled_from(
    [*list(',; \t=.*"'), "q", "Q", "0", "1", "5", "br", "gzip", "identity", "x-gzip", "é"]
)
AE_TEXT = st.one_of(st.text(), st.lists(AE_ALPHABET).map("".join))


@given(AE_TEXT)
def test_any_accept_encoding_parses_to_weights_between_0_and_1(value: str) -> None:
    assert all(0.0 <= q <= 1.0 for q in parse_accept_encoding(value).values())


@given(AE_TEXT, st.lists(st.sampled_from(["br", "gzip", "identity", "zstd"]), unique=True))
def test_choice_is_none_or_an_available_coding(value: str, available: list[str]) -> None:
    chosen = choose_encoding(value, available)
    assert chosen is None or chosen in available


@given(AE_TEXT)
def test_normalised_value_is_canonical(value: str) -> None:
    assert normalize_accept_encoding(value) in ("", "br", "gzip", "br,gzip")
