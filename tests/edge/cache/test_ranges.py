"""Range requests served from a stored body (RFC 9110 14)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.cache.ranges import (
    ByteRange,
    Unsatisfiable,
    content_range,
    parse_range,
    unsatisfied_range,
)

SIZE = 10_000  # the RFC's examples use a 10000-byte representation


class TestRfcExamples:
    # RFC 9110 14.1.2, the examples for a representation of length 10000.
    @pytest.mark.parametrize(
        "value,start,end",
        [
            ("bytes=0-499", 0, 499),  # "The first 500 bytes"
            ("bytes=500-999", 500, 999),  # "The second 500 bytes"
            ("bytes=-500", 9500, 9999),  # "The final 500 bytes"
            ("bytes=9500-", 9500, 9999),  # "The final 500 bytes"
            ("bytes=0-0", 0, 0),  # "The first byte only"
            ("bytes=-1", 9999, 9999),  # "The last byte only"
        ],
    )
    def test_single_ranges(self, value: str, start: int, end: int) -> None:
        assert parse_range(value, SIZE) == ByteRange(start, end)

    def test_multiple_ranges_are_served_whole(self) -> None:
        # We ignore multi-range requests (RFC 9110 14.2: "A server MAY ignore the
        # Range header field") rather than build multipart/byteranges.
        assert parse_range("bytes=0-0,-1", SIZE) is None
        assert parse_range("bytes=500-600,601-999", SIZE) is None


class TestSatisfiable:
    def test_last_pos_beyond_the_end_is_clamped(self) -> None:
        # "if the value is greater than or equal to the current length ... the byte
        # range is interpreted as the remainder of the representation"
        assert parse_range("bytes=9000-20000", SIZE) == ByteRange(9000, 9999)
        assert parse_range("bytes=0-99999999999999999999999", SIZE) == ByteRange(0, 9999)

    def test_a_suffix_longer_than_the_body_is_the_whole_body(self) -> None:
        # "If the selected representation is shorter than the specified
        # suffix-length, the entire representation is used."
        assert parse_range("bytes=-20000", SIZE) == ByteRange(0, 9999)
        assert parse_range("bytes=-" + "9" * 5000, SIZE) == ByteRange(0, 9999)

    def test_unit_is_case_insensitive_and_ows_around_members_is_allowed(self) -> None:
        assert parse_range("Bytes= 0-1 ", SIZE) == ByteRange(0, 1)
        assert parse_range("bytes=0-1, ", SIZE) == ByteRange(0, 1)

    def test_leading_zeros(self) -> None:
        assert parse_range("bytes=0010-0019", SIZE) == ByteRange(10, 19)

    def test_length(self) -> None:
        assert ByteRange(0, 0).length == 1
        assert ByteRange(500, 999).length == 500


class TestUnsatisfiable:
    def test_a_first_pos_at_or_beyond_the_end(self) -> None:
        # RFC 9110 14.1.1: "satisfiable if the first-pos is less than the current
        # length of the selected representation"
        assert parse_range("bytes=10000-", SIZE) == Unsatisfiable(SIZE)
        assert parse_range("bytes=10000-10001", SIZE) == Unsatisfiable(SIZE)

    def test_a_zero_suffix(self) -> None:
        # "a suffix-range is satisfiable if the suffix-length is not zero"
        assert parse_range("bytes=-0", SIZE) == Unsatisfiable(SIZE)

    def test_when_every_range_of_several_is_unsatisfiable(self) -> None:
        assert parse_range("bytes=10000-, -0", SIZE) == Unsatisfiable(SIZE)

    @pytest.mark.parametrize("value", ["bytes=0-", "bytes=0-0", "bytes=-1", "bytes=-0"])
    def test_an_empty_body_satisfies_no_range(self, value: str) -> None:
        assert parse_range(value, 0) == Unsatisfiable(0)


class TestIgnored:
    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            "items=0-1",  # "MUST ignore a Range header field that contains a range unit
            # it does not understand"
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-0",  # "invalid if the last-pos value is present and less than the
            # first-pos"
            "bytes=0-1-2",
            "bytes = 0-1",
            "bytes=0 - 1",
            "bytes=+1-2",
            "bytes=\u0660-\u0661",
            "bytes=0-1;x",
        ],
    )
    def test_invalid_values_serve_the_whole_body(self, value: str | None) -> None:
        assert parse_range(value, SIZE) is None

    def test_an_invalid_member_invalidates_the_whole_header(self) -> None:
        assert parse_range("bytes=0-1, 5-2", SIZE) is None


class TestByteBoundaries:
    VALUE = "bytes=100-199"

    def test_every_prefix(self) -> None:
        expected = {
            "bytes=1": None,
            "bytes=10": None,
            "bytes=100": None,
            "bytes=100-": ByteRange(100, 9999),
            "bytes=100-1": None,  # last-pos < first-pos
            "bytes=100-19": None,
            "bytes=100-199": ByteRange(100, 199),
        }
        for cut in range(len(self.VALUE) + 1):
            prefix = self.VALUE[:cut]
            assert parse_range(prefix, SIZE) == expected.get(prefix), prefix

    def test_trailing_data_is_invalid(self) -> None:
        assert parse_range(self.VALUE + "x", SIZE) is None
        assert parse_range(self.VALUE + "-", SIZE) is None

    @pytest.mark.parametrize("size", [1, 2, 100, 200, 201])
    def test_around_the_end_of_the_body(self, size: int) -> None:
        result = parse_range("bytes=100-199", size)
        if size <= 100:
            assert result == Unsatisfiable(size)
        else:
            assert result == ByteRange(100, min(199, size - 1))


class TestContentRange:
    def test_partial(self) -> None:
        assert content_range(ByteRange(0, 499), SIZE) == "bytes 0-499/10000"

    def test_unsatisfied(self) -> None:
        assert unsatisfied_range(SIZE) == "bytes */10000"


RANGE_TEXT = st.tuples(
    st.sampled_from(["bytes=", "BYTES=", "bytes", "items=", ""]),
    st.lists(st.sampled_from([*"-,0123456789 \t;", "99999999999"])).map("".join),
).map("".join)


@given(st.one_of(st.text(), RANGE_TEXT), st.integers(min_value=0, max_value=10**12))
def test_any_range_is_a_range_within_the_body_416_or_the_whole_body(value: str, size: int) -> None:
    result = parse_range(value, size)
    if isinstance(result, ByteRange):
        assert 0 <= result.start <= result.end < size
    else:
        assert result is None or result == Unsatisfiable(size)
