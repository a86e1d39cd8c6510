"""HTTP-date (RFC 9110 5.6.7): the three formats, their boundaries, and fuzzing."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.cache.dates import format_http_date, parse_http_date

# The RFC's own example instant, in each of its three formats.
NOV_6_1994 = float(calendar.timegm((1994, 11, 6, 8, 49, 37)))
IMF_FIXDATE = "Sun, 06 Nov 1994 08:49:37 GMT"
RFC_850 = "Sunday, 06-Nov-94 08:49:37 GMT"
ASCTIME = "Sun Nov  6 08:49:37 1994"


@pytest.mark.parametrize("value", [IMF_FIXDATE, RFC_850, ASCTIME])
def test_recipients_parse_all_three_formats(value: str) -> None:
    # "A recipient that parses a timestamp value in an HTTP field MUST accept all
    # three HTTP-date formats."
    assert parse_http_date(value) == NOV_6_1994


def test_names_are_matched_case_insensitively_and_ows_is_ignored() -> None:
    assert parse_http_date("  sun, 06 NOV 1994 08:49:37 gmt\t") == NOV_6_1994


def test_asctime_accepts_a_two_digit_day() -> None:
    assert parse_http_date("Thu Nov 17 08:49:37 1994") == NOV_6_1994 + 11 * 86400


def test_rfc850_two_digit_year_without_a_clock_uses_the_posix_pivot() -> None:
    assert parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT") == 0.0
    assert parse_http_date("Friday, 01-Jan-38 00:00:00 GMT") == calendar.timegm(
        (2038, 1, 1, 0, 0, 0)
    )


def test_rfc850_year_more_than_50_years_ahead_is_in_the_past_century() -> None:
    # "MUST interpret a timestamp that appears to be more than 50 years in the
    # future as representing the most recent year in the past that had the same
    # last two digits."
    now = float(calendar.timegm((2030, 6, 1, 0, 0, 0)))
    assert parse_http_date("Monday, 01-Jan-80 00:00:00 GMT", now=now) == calendar.timegm(
        (2080, 1, 1, 0, 0, 0)
    )
    assert parse_http_date("Thursday, 01-Jan-81 00:00:00 GMT", now=now) == calendar.timegm(
        (1981, 1, 1, 0, 0, 0)
    )
    assert parse_http_date("Tuesday, 01-Jan-30 00:00:00 GMT", now=now) == calendar.timegm(
        (2030, 1, 1, 0, 0, 0)
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0",
        "-1",
        "Sun, 06 Nov 1994 08:49:37 UTC",  # only GMT
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 6 Nov 1994 08:49:37 GMT",  # day is 2DIGIT
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",  # no such day
        "Sun, 29 Feb 1994 08:49:37 GMT",  # not a leap year
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sun, 06 Xyz 1994 08:49:37 GMT",
        "Sun,06 Nov 1994 08:49:37 GMT",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # non-ASCII digits are not DIGIT
    ],
)
def test_anything_else_is_invalid(value: str) -> None:
    assert parse_http_date(value) is None


def test_none_is_none() -> None:
    assert parse_http_date(None) is None


def test_leap_day_and_leap_second_are_valid() -> None:
    assert parse_http_date("Thu, 29 Feb 1996 00:00:00 GMT") is not None
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == calendar.timegm(
        (2017, 1, 1, 0, 0, 0)
    )


@pytest.mark.parametrize("value", [IMF_FIXDATE, RFC_850, ASCTIME])
def test_every_proper_prefix_and_any_trailing_data_is_invalid(value: str) -> None:
    for cut in range(len(value)):
        assert parse_http_date(value[:cut]) is None, value[:cut]
    assert parse_http_date(value + "x") is None
    assert parse_http_date(value + ", " + value) is None


def test_format_is_imf_fixdate() -> None:
    assert format_http_date(NOV_6_1994) == IMF_FIXDATE
    assert format_http_date(NOV_6_1994 + 0.9) == IMF_FIXDATE


@given(st.integers(min_value=0, max_value=253402300799))
def test_format_then_parse_round_trips(ts: int) -> None:
    assert parse_http_date(format_http_date(ts)) == ts


@given(st.text())
def test_any_text_parses_or_is_none(value: str) -> None:
    result = parse_http_date(value)
    assert result is None or isinstance(result, float)


@given(st.from_regex(r"[A-Za-z]{3,9}, [0-9]{2}[ -][A-Za-z]{3}[ -][0-9]{2,4} [0-9:]{8} GMT"))
def test_date_shaped_text_parses_or_is_none(value: str) -> None:
    result = parse_http_date(value)
    assert result is None or isinstance(result, float)
