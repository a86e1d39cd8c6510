"""HTTP-date parsing and formatting (RFC 9110 5.6.7).

Pure: the only clock is an optional `now` argument, used to place RFC 850 dates'
two-digit years exactly as the RFC asks.
"""

from __future__ import annotations

import calendar
import functools
import re
import time

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_SHORT_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_LONG_DAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"

# IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
_IMF_FIXDATE = re.compile(
    rf"{_SHORT_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT", re.IGNORECASE | re.ASCII
)
# obsolete RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
_RFC850 = re.compile(
    rf"{_LONG_DAY}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT", re.IGNORECASE | re.ASCII
)
# obsolete asctime: Sun Nov  6 08:49:37 1994 (day is 2DIGIT or SP DIGIT)
_ASCTIME = re.compile(
    rf"{_SHORT_DAY} {_MONTH} ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})", re.IGNORECASE | re.ASCII
)


def parse_http_date(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds since the epoch for an HTTP-date, or None when `value` is not one.

    All three formats are accepted, as RFC 9110 5.6.7 requires of recipients:
    IMF-fixdate, RFC 850 and asctime. Names are matched case-insensitively and
    surrounding whitespace is ignored; anything else (an impossible calendar date
    included) is invalid. RFC 850's two-digit year is placed by the RFC's rule
    ("more than 50 years in the future" → the past century) when `now` is given,
    otherwise by the POSIX convention (69 and below → 20xx).
    """
    if value is None:
        return None
    text = value.strip(" \t")
    if len(text) == _FIXDATE_LENGTH:  # no other format has this length
        return _parse_fixdate(text)
    if match := _RFC850.fullmatch(text):
        day, month, short_year, hour, minute, second = match.groups()
        return _to_timestamp(_full_year(int(short_year), now), month, day, hour, minute, second)
    if match := _ASCTIME.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
        return _to_timestamp(int(year), month, day.strip(), hour, minute, second)
    return None


#: the length of every IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"); RFC 850 dates
#: are 30 or more characters, asctime dates 24
_FIXDATE_LENGTH = 29
#: IMF-fixdates remembered parsed (`_parse_fixdate`)
_MEMO_SIZE = 512


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _parse_fixdate(text: str) -> float | None:
    """An IMF-fixdate (None when `text` is not one), remembered by its text: a miss
    parses its answer's Date, Last-Modified and Expires, and an upstream's Date
    repeats for a whole second (4% of the event loop on cold misses,
    docs/benchmarks.md). Only this format is remembered, as it needs no `now`."""
    match = _IMF_FIXDATE.fullmatch(text)
    if match is None:
        return None
    day, month, year, hour, minute, second = match.groups()
    return _to_timestamp(int(year), month, day, hour, minute, second)


def _full_year(short_year: int, now: float | None) -> int:
    """The four-digit year of an RFC 850 date's two-digit year."""
    if now is None:
        return 2000 + short_year if short_year < 70 else 1900 + short_year
    # RFC 9110 5.6.7: "MUST interpret a timestamp that appears to be more than 50
    # years in the future as representing the most recent year in the past that
    # had the same last two digits."
    this_year = time.gmtime(now).tm_year
    year = this_year - this_year % 100 + short_year
    if year > this_year + 50:
        year -= 100
    return year


def _to_timestamp(
    year: int, month: str, day: str, hour: str, minute: str, second: str
) -> float | None:
    """Epoch seconds for broken-down UTC fields, or None if they name no instant."""
    if year < 1:  # year 0000 matches the grammar but no calendar has it
        return None
    month_number = _MONTHS[month.lower()]
    day_number, hours, minutes, seconds = int(day), int(hour), int(minute), int(second)
    if not 1 <= day_number <= calendar.monthrange(year, month_number)[1]:
        return None
    # time-of-day allows second 60 (a leap second); timegm carries it over.
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return float(calendar.timegm((year, month_number, day_number, hours, minutes, seconds)))


def format_http_date(ts: float) -> str:
    """The IMF-fixdate for `ts` (whole seconds, truncated), e.g. for Date and Last-Modified."""
    t = time.gmtime(int(ts))
    return (
        f"{_DAY_NAMES[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_NAMES[t.tm_mon - 1]} "
        f"{t.tm_year:04d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )
