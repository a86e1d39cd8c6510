"""Cache keys: target normalisation, primary and secondary keys (RFC 9111 4.1),
surrogate keys, and the header-list syntax they read (RFC 9110 5.6.1)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.cache.headers import header_list_values, split_list, unquote
from edge.cache.keys import (
    LONE_NAMES,
    TargetKeys,
    normalize_path,
    normalize_target,
    origin_form,
    primary_key,
    remove_dot_segments,
    secondary_key,
    surrogate_keys,
    vary_fields,
)

TRACKING = ("utm_*", "gclid", "fbclid")


class TestHeaderLists:
    def test_members_of_every_line_stripped_and_empty_ones_dropped(self) -> None:
        headers = CIMultiDict([("Vary", " a ,, b"), ("vary", ""), ("VARY", "c,\t")])
        assert header_list_values(headers, "vary") == ["a", "b", "c"]

    def test_commas_inside_quoted_strings_do_not_split(self) -> None:
        assert split_list('a="x, y", b="\\", z", c') == ['a="x, y"', 'b="\\", z"', "c"]

    def test_an_absent_field_has_no_members(self) -> None:
        assert header_list_values(CIMultiDict(), "vary") == []

    def test_unquote_resolves_quoted_pairs(self) -> None:
        assert unquote('"a\\"b\\\\c"') == 'a"b\\c'
        assert unquote("token") == "token"
        assert unquote('"') == '"'

    @given(st.text())
    def test_members_are_never_empty_or_padded(self, value: str) -> None:
        assert all(m and m == m.strip(" \t") for m in split_list(value))


class TestNormalizeTarget:
    def test_path_without_query_is_unchanged(self) -> None:
        assert normalize_target("/a/b.css", True, TRACKING) == "/a/b.css"

    def test_query_params_are_sorted_by_name_stably(self) -> None:
        assert normalize_target("/p?b=2&a=9&c=1&a=1", True, ()) == "/p?a=9&a=1&b=2&c=1"

    def test_without_sorting_the_order_is_kept(self) -> None:
        assert normalize_target("/p?b=2&a=1", False, ()) == "/p?b=2&a=1"

    def test_tracking_params_are_dropped_by_pattern(self) -> None:
        target = "/p?utm_source=x&id=7&gclid=abc&utm_medium=y&fbclid=z&gclidx=1"
        assert normalize_target(target, False, TRACKING) == "/p?id=7&gclidx=1"

    def test_a_percent_encoded_name_is_matched_decoded(self) -> None:
        assert normalize_target("/p?utm%5Fsource=x&a=1", False, TRACKING) == "/p?a=1"

    def test_kept_params_stay_byte_exact(self) -> None:
        target = "/p?q=a+b%2c%2C&flag&empty=&x=%E2%9C%93"
        assert normalize_target(target, False, TRACKING) == target

    def test_no_question_mark_is_left_when_the_query_becomes_empty(self) -> None:
        assert normalize_target("/p?utm_source=x", True, TRACKING) == "/p"
        assert normalize_target("/p?", False, ()) == "/p"
        assert normalize_target("/p?&&", False, ()) == "/p"

    def test_empty_members_are_dropped(self) -> None:
        assert normalize_target("/p?a=1&&b=2&", False, ()) == "/p?a=1&b=2"

    def test_a_fragment_never_reaches_the_key(self) -> None:
        assert normalize_target("/p?a=1#frag", False, ()) == "/p?a=1"

    def test_path_escapes_of_unreserved_characters_are_decoded(self) -> None:
        # RFC 3986 6.2.2.2: "%41" and "A" are equivalent; so are "%7E" and "~".
        assert normalize_target("/%7euser/%41%62c%2D%2e%5F", False, ()) == "/~user/Abc-._"

    def test_other_path_escapes_get_uppercase_hex(self) -> None:
        # RFC 3986 6.2.2.1: "%3a" and "%3A" are equivalent; reserved "/" stays encoded.
        assert normalize_target("/a%2fb/%3a%e2%9c%93", False, ()) == "/a%2Fb/%3A%E2%9C%93"

    def test_the_query_keeps_its_escapes(self) -> None:
        assert normalize_target("/%7e?x=%7e", False, ()) == "/~?x=%7e"

    @pytest.mark.parametrize("path", ["/100%", "/%", "/%4", "/%zz", "/%%41"])
    def test_broken_escapes_are_kept(self, path: str) -> None:
        assert normalize_path(path) == path.replace("%41", "A")

    @given(st.text())
    def test_normalising_twice_changes_nothing(self, target: str) -> None:
        once = normalize_target(target, True, TRACKING)
        assert normalize_target(once, True, TRACKING) == once

    @given(
        st.lists(
            st.sampled_from(["/", "a", ".", "..", "%2e", "%41", "?", "&", "=", "#", "x.y"]),
            max_size=14,
        )
    )
    def test_a_target_already_as_keyed_is_kept_and_any_other_rebuilt(
        self, parts: list[str]
    ) -> None:
        """Most targets need no rebuilding, and are returned as they are; the result
        is the same as the whole rebuild's (path escapes, dot segments, empty members)."""
        target = "".join(parts)
        without_fragment = target.partition("#")[0]
        path, _, query = without_fragment.partition("?")
        members = [member for member in query.split("&") if member]
        rebuilt = remove_dot_segments(normalize_path(path))
        if members:
            rebuilt += "?" + "&".join(members)
        assert normalize_target(target, False, ()) == rebuilt

    @given(
        st.lists(
            st.sampled_from(
                ["/", "a", ".", "%41", "?", "&", "=", "utm_x", "gclid", "b", "x.y", "z=1"]
            ),
            max_size=14,
        ),
        st.booleans(),
    )
    def test_the_shortcut_keys_as_the_whole_rebuild_does(
        self, parts: list[str], sort_query: bool
    ) -> None:
        """A target the shortcut keeps (or keeps the path of) is keyed as the whole
        rebuild keys it: a fragment, which the key never has, forces the rebuild."""
        target = "".join(parts)
        for drop in ((), TRACKING):
            rebuilt = normalize_target(target + "#fragment", sort_query, drop)
            assert normalize_target(target, sort_query, drop) == rebuilt, (target, drop)


class TestTargetKeys:
    """The hit lanes' keying of a target under one policy keys every target as
    `normalize_target` does, and what it remembers per parameter name is bounded."""

    @given(
        st.lists(
            st.sampled_from(
                ["/", "a", ".", "%41", "?", "&", "=", "#", "utm_x", "gclid", "b", "x.y", "z=1"]
            ),
            max_size=14,
        ),
        st.booleans(),
        st.sampled_from([(), TRACKING, ("b", "a*")]),
    )
    def test_every_target_is_keyed_as_normalize_target_keys_it(
        self, parts: list[str], sort_query: bool, drop: tuple[str, ...]
    ) -> None:
        """Asked once and again (the second time from what it remembered)."""
        target = "/" + "".join(parts)
        keyed = TargetKeys(sort_query, drop)
        expected = normalize_target(target, sort_query, drop)
        assert keyed(target) == expected
        assert keyed(target) == expected

    def test_a_lone_tracking_parameter_is_dropped_and_any_other_kept(self) -> None:
        keyed = TargetKeys(True, TRACKING)
        assert keyed("/a?utm_source=x") == "/a"
        assert keyed("/b?utm_medium=y") == "/b"
        assert keyed("/a?u=1") == "/a?u=1"
        assert keyed("/a?gclid") == "/a"
        assert keyed("/a?") == "/a"
        assert keyed("/a") == "/a"

    def test_the_names_it_remembers_are_bounded(self) -> None:
        """A client sending a new parameter name with every request does not grow it."""
        keyed = TargetKeys(True, TRACKING)
        for n in range(LONE_NAMES + 50):
            assert keyed(f"/a?p{n}=1") == f"/a?p{n}=1"
        assert 0 < len(keyed._lone_kept) <= LONE_NAMES


class TestDotSegments:
    """RFC 3986 6.2.2.3: "." and ".." segments are removed before keying, so every
    spelling of a path is one key, and the origin is asked for that one path."""

    @pytest.mark.parametrize(
        ("target", "keyed"),
        [
            ("/./x", "/x"),
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/%2e%2e/x", "/x"),
            ("/a/%2E/b", "/a/b"),
            ("/a/.%2e/b?q=/../", "/b?q=/../"),
            ("/a/..%2Fb", "/a/..%2Fb"),
            ("/a/...", "/a/..."),
            ("/.well-known/x", "/.well-known/x"),
        ],
    )
    def test_dot_segments_are_removed_after_decoding(self, target: str, keyed: str) -> None:
        assert normalize_target(target, False, ()) == keyed

    @given(
        st.lists(
            st.sampled_from([".", "..", "%2e", "%2E%2e", "a", "b.c", "", "%2F.."]), max_size=12
        )
    )
    def test_normalising_twice_is_once_and_no_dot_segment_remains(
        self, segments: list[str]
    ) -> None:
        once = normalize_target("/" + "/".join(segments), False, ())
        assert once.startswith("/")
        assert normalize_target(once, False, ()) == once
        assert not {".", ".."} & set(once.split("/"))

    @given(st.text())
    def test_removing_dot_segments_is_idempotent_on_any_text(self, path: str) -> None:
        once = remove_dot_segments(path)
        assert remove_dot_segments(once) == once


class TestOriginForm:
    """RFC 9112 3.2.2: an absolute-form target's authority names the host; what is
    keyed and sent upstream is its origin-form part."""

    @pytest.mark.parametrize(
        ("target", "path"),
        [
            ("http://www.example.com/a?b=1", "/a?b=1"),
            ("HTTPS://www.example.com:8443/a", "/a"),
            ("http://www.example.com", "/"),
            ("http://www.example.com?q", "/?q"),
            ("/already/origin-form", "/already/origin-form"),
            ("*", "*"),
        ],
    )
    def test_the_origin_form_part(self, target: str, path: str) -> None:
        assert origin_form(target) == path


class TestPrimaryKey:
    def test_host_is_lowercased_and_the_target_kept(self) -> None:
        assert primary_key("www", "WWW.Example.COM", "/a?b=1") == "www www.example.com/a?b=1"

    @pytest.mark.parametrize("host", ["example.com:80", "example.com:443", "example.com."])
    def test_default_ports_and_a_trailing_dot_are_dropped(self, host: str) -> None:
        assert primary_key("s", host, "/") == "s example.com/"

    def test_other_ports_are_kept(self) -> None:
        assert primary_key("s", "example.com:8080", "/") == "s example.com:8080/"
        assert primary_key("s", "[::1]:8080", "/") == "s [::1]:8080/"
        assert primary_key("s", "[::1]:443", "/") == "s [::1]/"

    def test_different_services_never_share_a_key(self) -> None:
        assert primary_key("a", "h", "/") != primary_key("b", "h", "/")


class TestSurrogateKeys:
    def test_surrogate_key_is_space_separated_and_cache_tag_comma_separated(self) -> None:
        headers = CIMultiDict(
            [
                ("Surrogate-Key", "product-1  all\tcat-2"),
                ("Cache-Tag", "cat-2, home,all"),
                ("Surrogate-Key", "late"),
            ]
        )
        assert surrogate_keys(headers) == ("product-1", "all", "cat-2", "late", "home")

    def test_no_tags(self) -> None:
        assert surrogate_keys(CIMultiDict()) == ()


class TestVary:
    def test_field_names_lowercased_sorted_deduplicated_across_lines(self) -> None:
        headers = CIMultiDict(
            [("Vary", "User-Agent, Accept-Encoding"), ("Vary", "accept-encoding,Origin")]
        )
        assert vary_fields(headers) == ("accept-encoding", "origin", "user-agent")

    def test_no_vary_is_an_empty_tuple(self) -> None:
        assert vary_fields(CIMultiDict()) == ()

    def test_star_anywhere_is_none(self) -> None:
        # RFC 9111 4.1: "A stored response with a Vary header field value containing
        # a member "*" always fails to match."
        assert vary_fields(CIMultiDict([("Vary", "Origin"), ("Vary", " * ")])) is None


def skey(vary: tuple[str, ...], **request: str) -> str:
    return secondary_key(
        vary, CIMultiDict((name.replace("_", "-"), value) for name, value in request.items())
    )


class TestSecondaryKey:
    def test_no_vary_is_the_empty_key(self) -> None:
        assert skey((), accept_encoding="gzip") == ""

    def test_equivalent_accept_encodings_share_a_variant(self) -> None:
        vary = ("accept-encoding",)
        assert skey(vary, accept_encoding="gzip, deflate, br") == skey(
            vary, accept_encoding="br;q=1.0, gzip;q=0.8"
        )
        assert skey(vary, accept_encoding="identity") == skey(vary)
        assert skey(vary, accept_encoding="gzip") != skey(vary, accept_encoding="br")

    def test_whitespace_is_normalised(self) -> None:
        vary = ("origin",)
        assert skey(vary, origin="  https://a.example ") == skey(vary, origin="https://a.example")

    def test_case_insensitive_fields_ignore_case(self) -> None:
        vary = ("accept-language",)
        assert skey(vary, accept_language="EN-us, fr") == skey(vary, accept_language="en-US,fr")

    def test_other_fields_keep_case(self) -> None:
        vary = ("x-variant",)
        assert skey(vary, x_variant="A") != skey(vary, x_variant="a")

    def test_an_absent_field_differs_from_an_empty_one(self) -> None:
        # RFC 9111 4.1: an absent field "can only match another request if it is
        # also absent there".
        assert skey(("origin",)) != skey(("origin",), origin="")

    def test_several_lines_equal_one_combined_line(self) -> None:
        vary = ("accept-language",)
        two_lines = secondary_key(
            vary, CIMultiDict([("Accept-Language", "en"), ("Accept-Language", "fr")])
        )
        assert two_lines == skey(vary, accept_language="en, fr")

    def test_values_cannot_be_confused_across_fields(self) -> None:
        vary = ("a", "b")
        assert skey(vary, a="1", b="2") != skey(vary, a="1, b", b="2")
        assert json.loads(skey(vary, a='x"],["b","y')) == [["a", 'x"],["b","y'], ["b", None]]
