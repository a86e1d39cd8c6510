"""Serving through failures, as pure rules: stale while the origin cannot be reached
(RFC 9111 4.2.4), and a soft purge's stale-while-revalidate window counted from the
purge (RFC 5861 3). Time is an argument; NOW is the only clock."""

from __future__ import annotations

import pytest

from edge.cache.policy import (
    Action,
    decide,
    may_serve_stale_on_error,
    may_serve_stale_when_unreachable,
    staleness,
)
from edge.cache.purge import PurgeRecord, PurgeRules, PurgeVerdict
from fleet.config import Service
from tests.edge.cache.test_policy import NOW, stored

DAY = 86400.0
STALE, NONE, GONE = PurgeVerdict.STALE, PurgeVerdict.NONE, PurgeVerdict.GONE
SITE = Service(name="site", hosts=("www.example.com",), origins=("http://127.0.0.1:1",))


class TestStaleWhenUnreachable:
    """RFC 9111 4.2.4: "A cache MUST NOT send stale responses unless it is
    disconnected or doing so is explicitly permitted by the client or origin server"."""

    def test_an_expired_response_may_be_served_while_disconnected(self) -> None:
        meta = stored("Cache-Control: max-age=60")
        assert may_serve_stale_when_unreachable(meta, NOW + 61, NONE, DAY)
        # a 5xx *answer* is not a disconnection: that takes stale-if-error
        assert not may_serve_stale_on_error(meta, NOW + 61, NONE)

    def test_only_up_to_the_service_bound(self) -> None:
        meta = stored("Cache-Control: max-age=60")
        assert may_serve_stale_when_unreachable(meta, NOW + 60 + 300, NONE, 300)
        assert not may_serve_stale_when_unreachable(meta, NOW + 60 + 301, NONE, 300)

    def test_zero_turns_it_off(self) -> None:
        meta = stored("Cache-Control: max-age=60")
        assert not may_serve_stale_when_unreachable(meta, NOW + 61, NONE, 0)

    @pytest.mark.parametrize(
        "cache_control",
        [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "max-age=60, no-cache",
            "s-maxage=60",
        ],
    )
    def test_directives_that_forbid_stale_forbid_it_here_too(self, cache_control: str) -> None:
        """ "A cache MUST NOT generate a stale response if it is prohibited by an
        explicit in-protocol directive (e.g., by a no-cache response directive, a
        must-revalidate response directive, or an applicable s-maxage or
        proxy-revalidate response directive)"."""
        meta = stored(f"Cache-Control: {cache_control}")
        assert not may_serve_stale_when_unreachable(meta, NOW + 61, NONE, DAY)

    def test_a_hard_purge_is_never_undone(self) -> None:
        meta = stored("Cache-Control: max-age=60")
        assert not may_serve_stale_when_unreachable(meta, NOW + 61, GONE, DAY)

    def test_a_soft_purge_is_stale_since_the_purge(self) -> None:
        meta = stored("Cache-Control: max-age=3600")
        assert may_serve_stale_when_unreachable(meta, NOW + 20, STALE, 30, purged_at=NOW + 10)
        assert not may_serve_stale_when_unreachable(meta, NOW + 41, STALE, 30, purged_at=NOW + 10)


class TestSoftPurgeWindow:
    """RFC 5861 3 with a soft purge: the object is stale from the purge on, so the
    stale-while-revalidate window ends that many seconds after the purge."""

    def test_staleness_of_a_fresh_object_counts_from_the_purge(self) -> None:
        meta = stored("Cache-Control: max-age=60, stale-while-revalidate=5")
        assert staleness(meta, NOW + 10, STALE, purged_at=NOW + 2) == pytest.approx(8.0)
        assert staleness(meta, NOW + 10, NONE) == pytest.approx(-50.0)

    def test_the_window_ends_on_time_after_the_purge(self) -> None:
        # fresh for 60 s; soft-purged at +2: stale may be served until +7, not +65
        meta = stored("Cache-Control: max-age=60, stale-while-revalidate=5")
        purged = NOW + 2
        assert decide(meta, NOW + 3, STALE, purged).action is Action.SERVE_STALE_REVALIDATE
        assert decide(meta, NOW + 7, STALE, purged).action is Action.SERVE_STALE_REVALIDATE
        later = decide(meta, NOW + 7.5, STALE, purged)
        assert later.action is Action.REVALIDATE
        assert later.fwd == "stale"

    def test_an_object_already_stale_keeps_its_own_staleness(self) -> None:
        meta = stored("Cache-Control: max-age=10, stale-while-revalidate=5")
        # expired at +10, purged at +12: stale for 3 s at +13 by its age
        assert staleness(meta, NOW + 13, STALE, purged_at=NOW + 12) == pytest.approx(3.0)
        assert decide(meta, NOW + 15.5, STALE, NOW + 12).action is Action.REVALIDATE

    def test_stale_if_error_counts_from_the_purge_too(self) -> None:
        meta = stored("Cache-Control: max-age=3600, stale-if-error=5")
        assert may_serve_stale_on_error(meta, NOW + 4, STALE, purged_at=NOW)
        assert not may_serve_stale_on_error(meta, NOW + 6, STALE, purged_at=NOW)

    def test_the_rules_say_when_the_soft_purge_was_applied(self) -> None:
        rules = PurgeRules([SITE])
        rules.apply(PurgeRecord(1, "p1", "site", urls=("/a",), soft=True), 100.0)
        assert rules.soft_purged_at("site", "www.example.com", "/a", (), 99.0) == 100.0
        # fetched after the purge: not covered
        assert rules.soft_purged_at("site", "www.example.com", "/a", (), 100.5) is None
        assert rules.soft_purged_at("site", "www.example.com", "/b", (), 99.0) is None
        rules.apply(PurgeRecord(2, "p2", "site", urls=("/b",)), 101.0)
        # a hard purge is not a soft purge time
        assert rules.soft_purged_at("site", "www.example.com", "/b", (), 99.0) is None
