"""Purge rules at lookup: URL, prefix, tag and all; hard and soft; the fetch race."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.cache.keys import normalize_target
from edge.cache.purge import MAX_INVALIDATIONS, PurgeRecord, PurgeRules, PurgeVerdict
from fleet.config import CacheKeyPolicy, Service

SITE = Service(name="site", hosts=("www.example.com", "img.example.com"), origins=("http://o",))
OTHER = Service(name="other", hosts=("other.example.org",), origins=("http://o",))

GONE, STALE, NONE = PurgeVerdict.GONE, PurgeVerdict.STALE, PurgeVerdict.NONE

_seq = iter(range(1, 1_000_000))


def purge(
    service: str = "site",
    *,
    urls: tuple[str, ...] = (),
    prefixes: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    all: bool = False,
    soft: bool = False,
    seq: int | None = None,
) -> PurgeRecord:
    """A purge record with the next sequence number unless one is given."""
    number = next(_seq) if seq is None else seq
    return PurgeRecord(number, f"p{number}", service, urls, prefixes, tags, all, soft, 0.0)


def key(target: str, service: Service = SITE) -> str:
    """The target as the cache key has it."""
    policy = service.cache_key
    return normalize_target(target, policy.sort_query, policy.drop_params)


class Node:
    """A node's rules with a frozen clock: `at(t)` moves it, lookups read like prose."""

    def __init__(self) -> None:
        self.rules = PurgeRules([SITE, OTHER])
        self.now = 100.0

    def at(self, now: float) -> Node:
        self.now = now
        return self

    def applies(self, record: PurgeRecord) -> Node:
        self.rules.apply(record, self.now)
        return self

    def lookup(
        self,
        target: str,
        *,
        host: str = "www.example.com",
        tags: tuple[str, ...] = (),
        fetched_at: float,
        service: str = "site",
    ) -> PurgeVerdict:
        return self.rules.verdict(service, host, key(target), tags, fetched_at)


def test_no_rules_means_no_verdict() -> None:
    node = Node()
    assert node.lookup("/a", fetched_at=50.0) is NONE


def test_url_purge_removes_object_fetched_before_it() -> None:
    node = Node().at(100.0).applies(purge(urls=("https://www.example.com/a",)))
    assert node.lookup("/a", fetched_at=99.0) is GONE
    assert node.lookup("/b", fetched_at=99.0) is NONE


def test_object_fetched_after_the_purge_is_untouched() -> None:
    node = Node().at(100.0).applies(purge(urls=("/a",)))
    assert node.lookup("/a", fetched_at=100.5) is NONE


def test_fetch_that_started_before_the_purge_counts_as_older_even_if_answered_after() -> None:
    # The upstream request started at 99.9; the purge was applied at 100.0 while the
    # answer was still on its way. stored_at is the start, so the object is purged.
    node = Node().at(100.0).applies(purge(urls=("/a",)))
    assert node.lookup("/a", fetched_at=99.9) is GONE


def test_rule_applied_at_the_same_instant_as_the_fetch_does_not_cover_it() -> None:
    node = Node().at(100.0).applies(purge(urls=("/a",)))
    assert node.lookup("/a", fetched_at=100.0) is NONE


def test_soft_purge_marks_stale() -> None:
    node = Node().at(100.0).applies(purge(urls=("/a",), soft=True))
    assert node.lookup("/a", fetched_at=99.0) is STALE


def test_hard_wins_over_soft_when_both_cover_the_object() -> None:
    node = Node().at(100.0).applies(purge(urls=("/a",), soft=True))
    node.at(110.0).applies(purge(tags=("t",)))
    assert node.lookup("/a", tags=("t",), fetched_at=105.0) is GONE
    assert node.lookup("/a", fetched_at=105.0) is NONE
    assert node.lookup("/a", fetched_at=99.0) is STALE


def test_path_url_purges_every_host_of_the_service() -> None:
    node = Node().applies(purge(urls=("/logo.png",)))
    assert node.lookup("/logo.png", host="www.example.com", fetched_at=1.0) is GONE
    assert node.lookup("/logo.png", host="img.example.com", fetched_at=1.0) is GONE


def test_absolute_url_purges_only_its_host_whatever_the_scheme() -> None:
    node = Node().applies(purge(urls=("http://IMG.example.com/logo.png",)))
    assert node.lookup("/logo.png", host="img.example.com", fetched_at=1.0) is GONE
    assert node.lookup("/logo.png", host="www.example.com", fetched_at=1.0) is NONE


def test_host_with_port_is_the_same_host() -> None:
    node = Node().applies(purge(urls=("https://img.example.com/a",)))
    assert node.lookup("/a", host="img.example.com:8443", fetched_at=1.0) is GONE


def test_absolute_url_of_a_foreign_host_purges_nothing() -> None:
    node = Node().applies(purge(urls=("https://evil.example.net/a",)))
    assert node.lookup("/a", fetched_at=1.0) is NONE


def test_url_rule_uses_the_cache_key_normalization_of_the_query() -> None:
    node = Node().applies(purge(urls=("/search?b=2&a=1&utm_source=mail",)))
    assert node.lookup("/search?a=1&b=2", fetched_at=1.0) is GONE
    assert node.lookup("/search?a=1&b=3", fetched_at=1.0) is NONE


def test_url_rule_without_query_does_not_cover_other_queries() -> None:
    node = Node().applies(purge(urls=("/a",)))
    assert node.lookup("/a?page=2", fetched_at=1.0) is NONE


def test_query_order_matters_when_the_service_keeps_it() -> None:
    keeps = Service(
        name="keeps",
        hosts=("k.example.com",),
        origins=("http://o",),
        cache_key=CacheKeyPolicy(sort_query=False, drop_params=()),
    )
    rules = PurgeRules([keeps])
    rules.apply(purge("keeps", urls=("/a?b=1&a=2",)), 10.0)
    same = normalize_target("/a?b=1&a=2", False, ())
    swapped = normalize_target("/a?a=2&b=1", False, ())
    assert rules.verdict("keeps", "k.example.com", same, (), 1.0) is GONE
    assert rules.verdict("keeps", "k.example.com", swapped, (), 1.0) is NONE


def test_prefix_covers_paths_below_it_within_its_host() -> None:
    node = Node().applies(purge(prefixes=("https://www.example.com/img/",)))
    assert node.lookup("/img/a.png", fetched_at=1.0) is GONE
    assert node.lookup("/img/deep/b.png?v=1", fetched_at=1.0) is GONE
    assert node.lookup("/im", fetched_at=1.0) is NONE
    assert node.lookup("/css/a.css", fetched_at=1.0) is NONE
    assert node.lookup("/img/a.png", host="img.example.com", fetched_at=1.0) is NONE


def test_path_prefix_covers_every_host() -> None:
    node = Node().applies(purge(prefixes=("/img/",)))
    assert node.lookup("/img/a.png", host="img.example.com", fetched_at=1.0) is GONE
    assert node.lookup("/img/a.png", host="www.example.com", fetched_at=1.0) is GONE


def test_many_prefixes_of_different_lengths() -> None:
    node = Node()
    for depth in range(1, 30):
        node.applies(purge(prefixes=("/d" * depth + "/x",)))
    assert node.lookup("/d/d/d/x/file", fetched_at=1.0) is GONE
    assert node.lookup("/d/d/d/y/file", fetched_at=1.0) is NONE


def test_tag_purges_objects_with_that_surrogate_key() -> None:
    node = Node().applies(purge(tags=("product-1",)))
    assert node.lookup("/p", tags=("home", "product-1"), fetched_at=1.0) is GONE
    assert node.lookup("/p", tags=("product-2",), fetched_at=1.0) is NONE
    assert node.lookup("/p", fetched_at=1.0) is NONE


def test_all_purges_everything_of_the_service_and_nothing_else() -> None:
    node = Node().applies(purge(all=True))
    assert node.lookup("/anything", fetched_at=1.0) is GONE
    assert node.lookup("/", host="img.example.com", fetched_at=1.0) is GONE
    assert node.lookup("/a", host="other.example.org", service="other", fetched_at=1.0) is NONE


def test_tags_are_scoped_to_their_service() -> None:
    node = Node().applies(purge("other", tags=("t",)))
    assert node.lookup("/a", tags=("t",), fetched_at=1.0) is NONE
    assert (
        node.lookup("/a", host="other.example.org", service="other", tags=("t",), fetched_at=1.0)
        is GONE
    )


def test_unknown_service_has_no_verdict() -> None:
    node = Node().applies(purge("nope", all=True))
    assert node.lookup("/a", service="nope", fetched_at=1.0) is NONE


def test_apply_is_idempotent_per_seq() -> None:
    rules = PurgeRules([SITE])
    record = purge(urls=("/a",), seq=1)
    rules.apply(record, 100.0)
    version = rules.version
    rules.apply(record, 200.0)  # a re-delivery must not move the rule's time
    assert rules.version == version
    assert rules.verdict("site", "www.example.com", key("/a"), (), 150.0) is NONE


def test_applied_seq_is_contiguous() -> None:
    rules = PurgeRules([SITE])
    rules.apply(purge(urls=("/a",), seq=1), 1.0)
    rules.apply(purge(urls=("/c",), seq=3), 1.0)
    assert rules.applied_seq == 1
    rules.apply(purge(urls=("/b",), seq=2), 1.0)
    assert rules.applied_seq == 3


def test_version_moves_on_every_apply() -> None:
    rules = PurgeRules([SITE])
    before = rules.version
    rules.apply(purge(tags=("x",), seq=1), 1.0)
    rules.apply_local(purge(all=True, soft=True, seq=0), 2.0)
    assert rules.version == before + 2


def test_local_rule_does_not_touch_applied_seq() -> None:
    rules = PurgeRules([SITE])
    rules.apply_local(purge(all=True, soft=True, seq=0), 50.0)
    assert rules.applied_seq == 0
    assert rules.verdict("site", "www.example.com", key("/a"), (), 49.0) is STALE


def test_expire_drops_rules_older_than_the_longest_lifetime() -> None:
    node = Node()
    node.at(100.0).applies(purge(urls=("/old",), prefixes=("/p/",), tags=("t",), all=True))
    node.at(500.0).applies(purge(urls=("/new",)))
    assert node.rules.expire(now=600.0, max_lifetime=200.0) == 4
    assert node.rules.rule_count == 1
    assert node.lookup("/old", fetched_at=50.0) is NONE
    assert node.lookup("/new", fetched_at=450.0) is GONE
    assert node.rules.expire(now=600.0, max_lifetime=200.0) == 0


def test_record_json_round_trip() -> None:
    record = PurgeRecord(7, "abc", "site", ("/a",), ("/p/",), ("t",), True, True, 12.5)
    assert PurgeRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "object"),
        ({"seq": "1", "id": "x", "service": "s"}, "'seq'"),
        ({"seq": -1, "id": "x", "service": "s"}, "'seq'"),
        ({"seq": 1, "id": 3, "service": "s"}, "'id'"),
        ({"seq": 1, "id": "x", "service": "s", "urls": "/a"}, "'urls'"),
        ({"seq": 1, "id": "x", "service": "s", "tags": [1]}, "'tags'"),
        ({"seq": 1, "id": "x", "service": "s", "soft": "yes"}, "'soft'"),
        ({"seq": 1, "id": "x", "service": "s", "accepted_at": "now"}, "'accepted_at'"),
    ],
)
def test_record_from_bad_json_names_the_field(data: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PurgeRecord.from_json(data)


@given(
    purged=st.lists(st.sampled_from(["/a", "/a/b", "/b", "/a?x=1"]), max_size=4),
    target=st.sampled_from(["/a", "/a/b", "/b", "/a?x=1", "/c"]),
    fetched_at=st.floats(min_value=0, max_value=200),
)
def test_url_verdict_matches_a_plain_scan(
    purged: list[str], target: str, fetched_at: float
) -> None:
    """The indexed lookup agrees with checking every rule one by one."""
    rules = PurgeRules([SITE])
    applied = []
    for index, url in enumerate(purged):
        at = 50.0 * (index + 1)
        rules.apply(purge(urls=(url,), seq=index + 1), at)
        applied.append((key(url), at))
    expected = GONE if any(t == key(target) and at > fetched_at for t, at in applied) else NONE
    assert rules.verdict("site", "www.example.com", key(target), (), fetched_at) is expected


# -- invalidation after unsafe methods (RFC 9111 4.4): rules of the node's own ----------


def test_an_invalidation_removes_what_was_fetched_before_it_on_that_host() -> None:
    node = Node()
    node.rules.invalidate("site", "www.example.com", key("/a"), 100.0)
    assert node.lookup("/a", fetched_at=99.0) is GONE
    assert node.lookup("/a", host="www.example.com:8080", fetched_at=99.0) is GONE
    assert node.lookup("/a", fetched_at=100.5) is NONE
    assert node.lookup("/a", host="img.example.com", fetched_at=99.0) is NONE
    assert node.lookup("/b", fetched_at=99.0) is NONE


def test_an_invalidation_tells_a_fill_that_started_before_it() -> None:
    rules = PurgeRules([SITE, OTHER])
    rules.invalidate("site", "www.example.com", key("/a"), 100.0)
    assert rules.invalidated_since("site", "www.example.com", key("/a"), 99.0)
    assert not rules.invalidated_since("site", "www.example.com", key("/a"), 100.0)
    assert not rules.invalidated_since("site", "www.example.com", key("/b"), 99.0)
    # an invalidation is not a purge: other fills of the service still collapse
    assert not rules.changed_since("site", 99.0)


def test_invalidations_are_bounded_oldest_first() -> None:
    rules = PurgeRules([SITE])
    for n in range(MAX_INVALIDATIONS + 5):
        rules.invalidate("site", "www.example.com", f"/p{n}", 100.0 + n)
    assert rules.rule_count == MAX_INVALIDATIONS
    assert rules.verdict("site", "www.example.com", "/p0", (), 50.0) is NONE
    last = f"/p{MAX_INVALIDATIONS + 4}"
    assert rules.verdict("site", "www.example.com", last, (), 50.0) is GONE


def test_invalidations_expire_like_rules() -> None:
    rules = PurgeRules([SITE])
    rules.invalidate("site", "www.example.com", "/a", 100.0)
    assert rules.expire(now=200.0, max_lifetime=50.0) == 1
    assert rules.verdict("site", "www.example.com", "/a", (), 50.0) is NONE


def test_a_url_purge_covers_every_dot_segment_spelling() -> None:
    node = Node().at(100.0).applies(purge(urls=("https://www.example.com/./x",)))
    assert node.lookup("/x", fetched_at=99.0) is GONE
    assert node.lookup("/a/../x", fetched_at=99.0) is GONE
