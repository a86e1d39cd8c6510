"""Purge rules relayed to a node's workers, over real socketpairs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from edge.cache.purge import PurgeRecord, PurgeRules, PurgeVerdict
from edge.workers import RelayingRules, follow_relayed_rules
from fleet.config import Service

SITE = Service(name="site", hosts=("www.example.com",), origins=("http://127.0.0.1:1",))


def record(seq: int, url: str) -> PurgeRecord:
    return PurgeRecord(seq, f"p{seq}", "site", urls=(url,))


def verdict(rules: PurgeRules, url: str) -> PurgeVerdict:
    return rules.verdict("site", "www.example.com", url, (), 0.0)


#: the followers of the test running now (held, so none is collected while it runs)
FOLLOWERS: list[asyncio.Task[None]] = []


@pytest.fixture(autouse=True)
async def stop_followers() -> AsyncIterator[None]:
    yield
    for task in FOLLOWERS:
        task.cancel()
    await asyncio.gather(*FOLLOWERS, return_exceptions=True)
    FOLLOWERS.clear()


async def joined(relaying: RelayingRules, number: int) -> tuple[PurgeRules, asyncio.Event]:
    """A worker's rules, joined to worker 0's `relaying` the way the supervisor does."""
    ours, theirs = socket.socketpair()
    rules, ready = PurgeRules([SITE]), asyncio.Event()
    FOLLOWERS.append(
        asyncio.get_running_loop().create_task(follow_relayed_rules(theirs, rules, ready))
    )
    ours.setblocking(False)
    assert await asyncio.get_running_loop().sock_recv(ours, 1) == b"h"
    assert await asyncio.to_thread(relaying.join, number, ours)
    await asyncio.wait_for(ready.wait(), 5)
    return rules, ready


async def test_a_joining_worker_gets_every_rule_so_far_then_each_new_one() -> None:
    relaying = RelayingRules([SITE])
    relaying.apply(record(1, "/a"), 10.0)
    worker, _ = await joined(relaying, 1)
    assert verdict(worker, "/a") is PurgeVerdict.GONE
    await asyncio.to_thread(relaying.apply, record(2, "/b"), 11.0)
    assert verdict(worker, "/b") is PurgeVerdict.GONE
    assert relaying.live_peers == [1]


async def test_a_dead_worker_is_dropped_and_reported_and_the_rule_still_applies() -> None:
    lost: list[int] = []
    ours, theirs = socket.socketpair()
    relaying = RelayingRules([SITE], [ours], on_lost=lost.append)
    theirs.close()  # the worker is gone
    relaying.apply(record(1, "/a"), 10.0)  # no exception: the live workers have it
    assert lost == [1] and relaying.live_peers == []
    assert verdict(relaying, "/a") is PurgeVerdict.GONE
    assert relaying.applied_seq == 1


async def test_expired_rules_are_not_given_to_a_worker_that_joins_later() -> None:
    relaying = RelayingRules([SITE])
    relaying.apply(record(1, "/old"), 10.0)
    relaying.apply(record(2, "/new"), 1000.0)
    relaying.expire(1005.0, 100.0)
    worker, _ = await joined(relaying, 1)
    assert verdict(worker, "/old") is PurgeVerdict.NONE
    assert verdict(worker, "/new") is PurgeVerdict.GONE
