"""One request's Outcome, read three ways: Cache-Status member, histogram, log field.

The members are RFC 9211's: `hit`, `fwd` (why it went upstream), `fwd-status`,
`ttl`, `stored`, `collapsed`, `detail`.
"""

from __future__ import annotations

from edge.outcome import ErrorSource, Outcome, fresh_hit, refused


def test_a_fresh_hit_says_hit_and_its_remaining_ttl() -> None:
    assert Outcome(hit=True, ttl=42).member() == "hit; ttl=42"


def test_the_hit_lanes_fresh_hit_is_the_same_outcome() -> None:
    made = fresh_hit(42)
    assert type(made) is Outcome
    assert made == Outcome(hit=True, ttl=42)
    assert made._asdict() == Outcome(hit=True, ttl=42)._asdict()  # field by field
    assert made.member() == "hit; ttl=42" and made.metric == "hit"


def test_a_stale_while_revalidate_hit_is_still_a_hit() -> None:
    outcome = Outcome(hit=True, ttl=-3, detail="stale-while-revalidate")
    assert outcome.member() == "hit; ttl=-3; detail=stale-while-revalidate"
    assert outcome.metric == "hit"


def test_a_stored_miss_says_why_it_went_upstream() -> None:
    outcome = Outcome(fwd="uri-miss", collapsed=True, stored=True)
    assert outcome.member() == "fwd=uri-miss; collapsed; stored"
    assert outcome.metric == "miss"


def test_a_revalidation_says_the_upstream_status_and_the_new_ttl() -> None:
    assert Outcome(fwd="stale", fwd_status=304, ttl=60).member() == (
        "fwd=stale; fwd-status=304; ttl=60"
    )


def test_a_relayed_answer_says_why_it_was_not_stored() -> None:
    assert Outcome(fwd="request", detail="not-storable", fwd_status=200).member() == (
        "fwd=request; detail=not-storable; fwd-status=200"
    )


def test_the_field_lists_the_tiers_above_first() -> None:
    outcome = Outcome(hit=True, ttl=5)
    assert outcome.cache_status("edge1") == "edge1; hit; ttl=5"
    assert outcome.cache_status("edge1", "shield1; fwd=miss; stored") == (
        "shield1; fwd=miss; stored, edge1; hit; ttl=5"
    )


def test_an_error_this_node_makes_is_not_an_upstream_error() -> None:
    outcome = refused("loop")
    assert outcome.error is ErrorSource.NODE
    assert outcome.member() == "detail=loop"
    assert "fwd=" not in outcome.cache_status("edge1")
    assert outcome.metric == "miss"
