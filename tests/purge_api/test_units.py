"""Tokens, the body parser and the rate limit, without a server."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.config import Service, TokenConfig
from purge_api.body import BodyError, BodyTooLarge, PurgeRequest, parse_purge_body
from purge_api.ratelimit import RateLimiter
from purge_api.tokens import TokenStore, bearer_token, hash_token, print_new_token

SITE = Service(name="site", hosts=("www.example.com",), origins=("http://o",))


def test_token_store_finds_the_token_by_its_hash_and_checks_scope() -> None:
    store = TokenStore(
        [
            TokenConfig("ci", hash_token("s3cret"), ("site",)),
            TokenConfig("ops", hash_token("x"), ("*",)),
        ]
    )
    ci = store.authenticate("Bearer s3cret")
    assert ci is not None and ci.name == "ci"
    assert store.allows(ci, "site") and not store.allows(ci, "other")
    ops = store.authenticate("bearer x")
    assert ops is not None and store.allows(ops, "anything")
    assert store.authenticate("Bearer wrong") is None
    assert store.authenticate("Basic s3cret") is None
    assert store.authenticate(None) is None


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Bearer ") is None
    assert bearer_token("") is None


def test_print_new_token_prints_a_token_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_new_token() == 0
    lines = capsys.readouterr().out.splitlines()
    token = lines[0].removeprefix("token:").strip()
    assert lines[1].removeprefix("sha256:").strip() == hash_token(token)


def test_body_accepts_every_kind_together() -> None:
    raw = json.dumps(
        {
            "urls": ["https://WWW.example.com/a", "/b"],
            "prefixes": ["/p/"],
            "tags": ["t"],
            "all": False,
            "soft": True,
        }
    ).encode()
    request = parse_purge_body(raw, SITE, 10)
    assert request.urls == ("https://WWW.example.com/a", "/b")
    assert request.item_count == 4 and request.soft


def test_body_over_max_items_is_too_large() -> None:
    with pytest.raises(BodyTooLarge, match="at most 2"):
        parse_purge_body(b'{"tags": ["a", "b", "c"]}', SITE, 2)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_our_error(raw: bytes) -> None:
    _parses_or_raises_ours(raw)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["urls", "prefixes", "tags", "all", "soft", "x"]), inner, max_size=4
            )
        ),
        max_leaves=10,
    )
)
def test_any_json_parses_or_raises_our_error(value: object) -> None:
    _parses_or_raises_ours(json.dumps(value).encode())


def _parses_or_raises_ours(raw: bytes) -> None:
    """The one invariant: a usable request, or our error; never anything else."""
    try:
        request = parse_purge_body(raw, SITE, 1000)
    except (BodyError, BodyTooLarge) as exc:
        assert str(exc)
        return
    assert isinstance(request, PurgeRequest)
    assert request.item_count > 0 or request.all


def test_rate_limiter_allows_a_burst_then_refills() -> None:
    limiter = RateLimiter(per_minute=2)
    assert limiter.take("ci", 0.0) == 0.0
    assert limiter.take("ci", 0.0) == 0.0
    assert limiter.take("ci", 0.0) == pytest.approx(30.0)
    assert limiter.take("other", 0.0) == 0.0
    assert limiter.take("ci", 30.0) == 0.0
