"""The memo of parsed IMF-fixdates: the same answers as parsing afresh, bounded in
size, and never holding a date whose meaning depends on `now` (RFC 850's year)."""

from __future__ import annotations

from edge.cache import dates
from edge.cache.dates import format_http_date, parse_http_date


def test_a_memoised_date_parses_as_before_and_the_memo_stays_bounded() -> None:
    for n in range(dates._MEMO_SIZE * 3):
        text = format_http_date(784111777 + n)
        assert parse_http_date(text) == 784111777 + n
        assert parse_http_date(f" {text}\t") == 784111777 + n  # the memoised copy
    assert dates._parse_fixdate.cache_info().currsize <= dates._MEMO_SIZE
    # an impossible date is remembered as none, and stays none
    assert parse_http_date("Sun, 31 Feb 1994 08:49:37 GMT") is None
    assert parse_http_date("Sun, 31 Feb 1994 08:49:37 GMT") is None


def test_an_rfc850_date_is_never_memoised() -> None:
    """RFC 9110 5.6.7: a two-digit year is placed relative to `now`."""
    text = "Sunday, 06-Nov-94 08:49:37 GMT"
    remembered = dates._parse_fixdate.cache_info()
    assert parse_http_date(text, now=0.0) == parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT")
    after = dates._parse_fixdate.cache_info()
    # only the fixdate was looked up (and remembered): the RFC 850 text never was
    assert after.hits + after.misses == remembered.hits + remembered.misses + 1
    later = parse_http_date(text, now=4_200_000_000.0)  # in 2103: '94 is 2094
    assert later is not None and later > 3_900_000_000
