"""The one bearer check of node-to-node calls."""

from __future__ import annotations

from runtime.auth import bearer_matches


def test_the_right_secret_matches() -> None:
    assert bearer_matches("Bearer s3cret", "s3cret")


def test_a_wrong_or_partial_secret_does_not() -> None:
    assert not bearer_matches("Bearer s3cre", "s3cret")
    assert not bearer_matches("Bearer s3crett", "s3cret")
    assert not bearer_matches("Basic s3cret", "s3cret")
    assert not bearer_matches("s3cret", "s3cret")


def test_no_header_does_not_match() -> None:
    assert not bearer_matches(None, "s3cret")
    assert not bearer_matches("", "s3cret")


def test_an_empty_secret_matches_nothing() -> None:
    # a process started without its secret must not accept "Bearer " from anyone
    assert not bearer_matches("Bearer ", "")
    assert not bearer_matches("", "")
    assert not bearer_matches(None, "")


def test_undecodable_header_bytes_are_refused_not_raised() -> None:
    # aiohttp hands over header bytes that are not UTF-8 as surrogate escapes
    assert not bearer_matches("Bearer \udcff\udcfe", "s3cret")
