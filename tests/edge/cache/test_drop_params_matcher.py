"""`drop_params` patterns matched by one compiled matcher per set of patterns: the
same verdicts as fnmatchcase tried pattern by pattern."""

from __future__ import annotations

from fnmatch import fnmatchcase

from hypothesis import given
from hypothesis import strategies as st

from edge.cache.keys import _dropped_names, normalize_target

NAMES = st.text(alphabet="ab_*?[]!-.%xyz", max_size=8)


@given(st.lists(NAMES, min_size=1, max_size=4), st.lists(NAMES, max_size=6))
def test_the_one_matcher_agrees_with_fnmatchcase(patterns: list[str], names: list[str]) -> None:
    dropped = _dropped_names(tuple(patterns))
    for name in names + patterns:
        expected = any(fnmatchcase(name, pattern) for pattern in patterns)
        assert (dropped(name) is not None) == expected, (name, patterns)


def test_a_pattern_matches_the_whole_name_not_a_prefix() -> None:
    assert normalize_target("/p?gclidx=1&gclid=2&xgclid=3", False, ("gclid",)) == (
        "/p?gclidx=1&xgclid=3"
    )
