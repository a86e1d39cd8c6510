"""Purge rules relayed between a node's workers, over real socketpairs and streams."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge.cache.purge import PurgeRecord, PurgeRules, PurgeVerdict
from edge.workers import RelayFollower, WorkerRelay
from fleet.config import Service

SITE = Service(name="site", hosts=("www.example.com",), origins=("http://127.0.0.1:1",))


def record(seq: int, url: str) -> PurgeRecord:
    return PurgeRecord(seq, f"p{seq}", "site", urls=(url,))


def verdict(rules: PurgeRules, url: str) -> PurgeVerdict:
    return rules.verdict("site", "www.example.com", url, (), 0.0)


#: the followers of the test running now (held, so none is collected while it runs)
FOLLOWERS: list[asyncio.Task[None]] = []
RELAYS: list[WorkerRelay] = []


@pytest.fixture(autouse=True)
async def stop_followers() -> AsyncIterator[None]:
    yield
    for relay in RELAYS:
        await relay.close()
    RELAYS.clear()
    for task in FOLLOWERS:
        task.cancel()
    await asyncio.gather(*FOLLOWERS, return_exceptions=True)
    FOLLOWERS.clear()


def relay_of(rules: PurgeRules, lost: list[int] | None = None) -> WorkerRelay:
    relay = WorkerRelay(rules, on_lost=lost.append if lost is not None else None)
    RELAYS.append(relay)
    return relay


async def hello(ours: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Worker 0's end once the worker said hello, as the supervisor opens it."""
    ours.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=ours)
    assert await asyncio.wait_for(reader.readline(), 5) == b"h\n"
    return reader, writer


async def joined(relay: WorkerRelay, number: int) -> PurgeRules:
    """A worker's rules, joined to worker 0's relay the way the supervisor does."""
    ours, theirs = socket.socketpair()
    rules, ready = PurgeRules([SITE]), asyncio.Event()
    FOLLOWERS.append(asyncio.create_task(RelayFollower(rules).run(theirs, ready)))
    assert await relay.join(number, *await hello(ours))
    await asyncio.wait_for(ready.wait(), 5)
    return rules


async def test_a_joining_worker_gets_every_rule_so_far_then_each_new_one() -> None:
    rules = PurgeRules([SITE])
    relay = relay_of(rules)
    rules.apply(record(1, "/a"), 10.0)
    worker = await joined(relay, 1)
    assert verdict(worker, "/a") is PurgeVerdict.GONE
    rules.apply(record(2, "/b"), 11.0)
    await rules.settled()  # what the purge sync awaits before it acknowledges
    assert verdict(worker, "/b") is PurgeVerdict.GONE
    assert relay.live_peers == [1]


async def test_a_dead_worker_is_dropped_and_reported_and_the_rule_still_applies() -> None:
    lost: list[int] = []
    rules = PurgeRules([SITE])
    relay = relay_of(rules, lost)
    ours, theirs = socket.socketpair()
    follower = asyncio.create_task(RelayFollower(PurgeRules([SITE])).run(theirs, asyncio.Event()))
    FOLLOWERS.append(follower)
    assert await relay.join(1, *await hello(ours))
    follower.cancel()  # the worker is gone
    await asyncio.gather(follower, return_exceptions=True)
    rules.apply(record(1, "/a"), 10.0)
    await rules.settled()  # no exception: the live workers have it
    assert lost == [1] and relay.live_peers == []
    assert verdict(rules, "/a") is PurgeVerdict.GONE
    assert rules.applied_seq == 1


async def test_a_worker_that_does_not_answer_is_lost_without_holding_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("edge.relay.RELAY_TIMEOUT", 0.5)
    lost: list[int] = []
    rules = PurgeRules([SITE])
    relay = relay_of(rules, lost)
    ours, theirs = socket.socketpair()
    theirs.sendall(b"h\n")
    reader, writer = await hello(ours)
    joining = asyncio.create_task(relay.join(1, reader, writer))
    # the "worker" acknowledges the join, then stops reading: alive, not answering
    assert await asyncio.to_thread(theirs.recv, 65536)
    theirs.sendall(b"k\nk\n")
    assert await joining
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    rules.apply(record(1, "/a"), 10.0)
    await rules.settled()
    waited = time.monotonic() - started
    ticker.cancel()
    await asyncio.gather(ticker, return_exceptions=True)
    theirs.close()
    assert lost == [1] and relay.live_peers == []
    # the loop kept running while the relay waited for the stuck worker
    assert waited >= 0.4 and ticks >= 10


async def test_expired_rules_are_not_given_to_a_worker_that_joins_later() -> None:
    rules = PurgeRules([SITE])
    relay = relay_of(rules)
    rules.apply(record(1, "/old"), 10.0)
    rules.apply(record(2, "/new"), 1000.0)
    rules.expire(1005.0, 100.0)
    worker = await joined(relay, 1)
    assert verdict(worker, "/old") is PurgeVerdict.NONE
    assert verdict(worker, "/new") is PurgeVerdict.GONE


async def test_a_workers_invalidation_reaches_worker_0_and_every_other_worker() -> None:
    rules = PurgeRules([SITE])
    relay = relay_of(rules)
    first, second = await joined(relay, 1), await joined(relay, 2)
    await first.invalidate_everywhere("site", "www.example.com:80", "/posted", 50.0)
    for each in (rules, first, second):
        assert each.verdict("site", "www.example.com", "/posted", (), 40.0) is PurgeVerdict.GONE
        assert each.invalidated_since("site", "www.example.com", "/posted", 40.0)
    # not a purge of the API's log: nothing for a worker that joins later
    assert verdict(await joined(relay, 3), "/posted") is PurgeVerdict.NONE


async def test_worker_0s_invalidation_is_relayed_before_it_settles() -> None:
    rules = PurgeRules([SITE])
    relay = relay_of(rules)
    worker = await joined(relay, 1)
    await rules.invalidate_everywhere("site", "www.example.com", "/x", 50.0)
    assert worker.verdict("site", "www.example.com", "/x", (), 40.0) is PurgeVerdict.GONE


async def test_an_unusable_line_from_a_worker_drops_it() -> None:
    lost: list[int] = []
    rules = PurgeRules([SITE])
    relay = relay_of(rules, lost)
    ours, theirs = socket.socketpair()
    theirs.sendall(b"h\n")
    reader, writer = await hello(ours)
    joining = asyncio.create_task(relay.join(1, reader, writer))
    batch = await asyncio.to_thread(theirs.recv, 65536)
    assert json.loads(batch.split(b"\n")[0])["op"] == "batch"
    theirs.sendall(b"k\nk\n{not json\n")
    assert await joining
    rules.apply(record(1, "/a"), 10.0)
    await rules.settled()
    theirs.close()
    assert lost == [1]


async def test_worker_0_gathers_every_workers_metric_values_on_a_scrape() -> None:
    rules = PurgeRules([SITE])
    relay = relay_of(rules)
    for number, hits in ((1, 3.0), (2, 4.0)):
        ours, theirs = socket.socketpair()
        worker_rules, ready = PurgeRules([SITE]), asyncio.Event()
        values: dict[str, Any] = {"hits": hits}
        follower = RelayFollower(worker_rules, functools.partial(dict, values))
        FOLLOWERS.append(asyncio.create_task(follower.run(theirs, ready)))
        assert await relay.join(number, *await hello(ours))
    gathered = await relay.collect_metrics(timeout=5)
    assert sorted(v["hits"] for v in gathered) == [3.0, 4.0]


async def test_a_worker_that_does_not_answer_is_left_out_of_a_scrape() -> None:
    rules = PurgeRules([SITE])
    relay = relay_of(rules)
    ours, theirs = socket.socketpair()
    # a worker that said hello and took its rules, then stopped reading
    reader, writer = await hello_only(ours, theirs)
    assert await relay.join(1, reader, writer)
    started = time.monotonic()
    assert await relay.collect_metrics(timeout=0.3) == []
    assert time.monotonic() - started < 3


async def hello_only(
    ours: socket.socket, theirs: socket.socket
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Worker 0's end of a worker that acknowledges its first lines and then hangs."""
    theirs.setblocking(False)
    their_reader, their_writer = await asyncio.open_connection(sock=theirs)
    their_writer.write(b"h\n")

    async def take_join() -> None:
        for _ in range(2):  # the batch and "ready"
            await their_reader.readline()
            their_writer.write(b"k\n")

    FOLLOWERS.append(asyncio.create_task(take_join()))
    return await hello(ours)
