"""The memo of parsed Cache-Control values: a value seen again is not parsed again,
and hostile values cannot grow it without bound."""

from __future__ import annotations

from edge.cache import directives
from edge.cache.directives import parse_cache_control


def test_a_value_seen_again_is_the_same_parse() -> None:
    first = parse_cache_control("public, max-age=3600")
    assert first.max_age == 3600 and first.public
    assert parse_cache_control("public, max-age=3600") is first


def test_the_memo_is_bounded_in_entries_and_value_length() -> None:
    for n in range(directives._MEMO_SIZE * 3):
        assert parse_cache_control(f"max-age={n}").max_age == n
    assert directives._parse_remembered.cache_info().currsize <= directives._MEMO_SIZE
    long_value = "max-age=5, " + "x" * directives._MEMO_VALUE
    assert parse_cache_control(long_value).max_age == 5
    assert parse_cache_control(long_value) is not parse_cache_control(long_value)
