"""What the HTTP/1.1 front's hit lane costs per hit, in-process, over held stores.

Not a test, and no network: each store left filled by `bench/store_scale.py --hold`
is opened again in this process (as one more worker of its node would open it),
with the edge's own engine and front, and the front's hit writer
(`HitWriter.answer`, what a request takes once its head is parsed) is called for
uniform requests over the store's objects, writing into a transport that keeps
nothing. Over 10^3 objects the hits are memory hits; over 10^6 most are ready
answers read from the ring. Rounds alternate between the stores, so a slower
minute of a shared machine falls on both; prints microseconds per hit (median and
least of the rounds) and the ratio of the smallest store's cost to each other's.

Wall time in one process, with no system calls in the timed loop: far steadier
than wrk against a server on a 2-CPU machine, and what a change to the lane moves.
Run from the repository root while the held edges are idle:

    TMPDIR=/dev/shm .venv/bin/python bench/store_scale.py --counts 1000,1000000 --workers 1 --hold
    .venv/bin/python bench/lane_cost.py --store DIR:1000 --store DIR:1000000 [--size 1k]

where each DIR is the store directory the hold prints for that count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hits import HOST  # sibling scripts, not a package
from store_scale import ACCEPT, SIZES

from edge.cache.keys import primary_key
from edge.cache.purge import PurgeRules
from edge.engine import Engine, EngineOptions
from edge.front.protocol import Front
from edge.front.types import RequestHead
from edge.limits import ConnectionLimits
from edge.metrics import NodeMetrics
from edge.node import TierUpstream
from edge.store import DiskStore
from edge.upstream import make_session
from fleet.config import Service

#: the service `bench/store_scale.py` fills (its fleet file's)
SERVICE = "bench"
#: the hot set a store's memory tier holds before the rounds, as under load
HOT = 1000


class NullTransport:
    """A transport that keeps nothing: the timed loop makes no system call."""

    def write(self, data: bytes) -> None:
        """Drop `data`."""

    def writelines(self, data: object) -> None:
        """Drop `data`."""


@dataclass
class HeldStore:
    """One held store opened here, with the engine and front that answer from it."""

    count: int
    session: aiohttp.ClientSession
    store: DiskStore
    engine: Engine
    front: Front


async def open_held(directory: str, count: int) -> HeldStore:
    """The store in `directory` of `count` objects, with an engine and a front."""
    config = Service(name=SERVICE, hosts=(HOST,), origins=("http://127.0.0.1:9",))
    store = await DiskStore.open(os.path.join(directory, "objects"), 64 << 30)
    metrics = NodeMetrics("edge1", "edge", {HOST: SERVICE})
    session = make_session()
    upstream = TierUpstream((config,), None, session)
    options = EngineOptions(node_name="edge1")
    engine = Engine((config,), options, store, upstream, PurgeRules((config,)), metrics)
    front = Front(engine, ConnectionLimits(100, 10.0, metrics), metrics, None)
    return HeldStore(count, session, store, engine, front)


def warm(held: HeldStore, path: str, accept: str | None) -> None:
    """The ring's places learned (every key read once) and the hot set in memory, as
    in a node that has served a while."""
    tag = held.front.hits.tag
    for number in range(held.count):
        held.store.ready_answer(primary_key(SERVICE, HOST, f"{path}?u={number}"), tag)
    hot = min(held.count, HOT)
    for _ in range(3):
        answered = sum(
            held.front.hits.answer(NullTransport(), head, True, "127.0.0.1")  # type: ignore[arg-type]
            for head in heads(path, range(hot), accept)
        )
    if answered != hot:
        raise SystemExit(f"{answered} of the hot set of {held.count:,} answered by the lane")


def heads(path: str, numbers: object, accept: str | None) -> list[RequestHead]:
    """Request heads for `path?u=N`, N in `numbers`, as the front parses them."""
    fields = [("Host", HOST)] + ([("Accept-Encoding", accept)] if accept else [])
    return [
        RequestHead("GET", f"{path}?u={number}", CIMultiDict(fields), "127.0.0.1")
        for number in numbers  # type: ignore[attr-defined]
    ]


def time_round(held: HeldStore, path: str, accept: str | None, hits: int) -> float:
    """Microseconds per hit over `hits` uniform requests."""
    requests = heads(path, (random.randrange(held.count) for _ in range(hits)), accept)
    answer = held.front.hits.answer
    transport = NullTransport()
    started = time.perf_counter()
    answered = 0
    for head in requests:
        answered += answer(transport, head, True, "127.0.0.1")  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    if answered != hits:
        raise SystemExit(f"{hits - answered} of {hits} hits not answered by the lane")
    return elapsed / hits * 1e6


async def run(stores: list[tuple[str, int]], size: str, rounds: int, hits: int) -> None:
    """Open the stores, time the rounds, print the table."""
    path, accept = SIZES[size], ACCEPT.get(size)
    async with contextlib.AsyncExitStack() as stack:
        held = []
        for directory, count in stores:
            one = await open_held(directory, count)
            stack.push_async_callback(one.session.close)
            stack.push_async_callback(one.store.close)
            stack.push_async_callback(one.engine.close, 1.0)
            warm(one, path, accept)
            held.append(one)
        report(held, [[time_round(one, path, accept, hits) for one in held] for _ in range(rounds)])


def report(held: list[HeldStore], rounds: list[list[float]]) -> None:
    """The table: each store's µs per hit over the rounds, against the first's."""
    times = [list(column) for column in zip(*rounds, strict=True)]
    print("| objects stored | µs per hit (median) | least | smallest store's cost / this |")
    print("|---|---|---|---|")
    base = statistics.median(times[0])
    for one, taken in zip(held, times, strict=True):
        median = statistics.median(taken)
        print(f"| {one.count:,} | {median:.2f} | {min(taken):.2f} | {base / median:.2f} |")


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        action="append",
        required=True,
        help="DIR:COUNT, a held store's directory and its objects; smallest first",
    )
    parser.add_argument("--size", default="1k", choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--hits", type=int, default=20_000, help="hits timed per round")
    args = parser.parse_args()
    stores = []
    for spec in args.store:
        directory, _, count = spec.rpartition(":")
        stores.append((directory, int(count)))
    asyncio.run(run(stores, args.size, args.rounds, args.hits))


if __name__ == "__main__":
    main()
