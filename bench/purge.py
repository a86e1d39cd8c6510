"""Purge benchmarks: propagation to every node, and the cost of a lookup verdict.

    .venv/bin/python bench/purge.py [--purges 200] [--sizes 3,30] [--logs sqlite,jetstream]
                                    [--rounds 3]

Propagation: a real purge API process, and N real node admin servers (aiohttp with
the real PurgeSync, all in this process) on loopback; 200 purges one after another,
each POSTed with ?wait=, and the API's own propagation time (the last node's ack,
after acceptance) for each, and the time the client waited for its 200 (which adds
the log's write and the acks' recording). Each log is measured in turn in every
round, so the JetStream/SQLite ratio compares runs on the same busy machine; the
JetStream log runs on a real 3-server NATS cluster (`nats-server` on PATH), one
stream per run. Verdict: PurgeRules.verdict() with 0 and with 10,000
active rules, for an object fetched before every rule (every index consulted) and
after them (the fast path of a hit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.cache.keys import normalize_target
from edge.cache.purge import PurgeRecord, PurgeRules
from fleet.config import Service
from tests.purge_api.harness import (
    AUTH,
    Applied,
    api_call,
    api_url,
    start_api,
    start_nodes,
    write_fleet,
)
from tests.support.fleetfile import TEST_NODE_SECRET
from tests.support.nats_cluster import NatsCluster
from tests.support.processes import NodeProcess


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


_runs = itertools.count(1)


async def propagation(
    size: int, purges: int, cluster: NatsCluster | None = None
) -> dict[str, float]:
    """p50/p99/max propagation (ms) of `purges` purges to a fleet of `size` nodes.

    With `cluster`, the API's log is a fresh stream on that JetStream cluster.
    """
    shields = max(1, size // 6)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        extra = "rate_limit_per_minute = 100000"
        fleet = write_fleet(
            root,
            shields=shields,
            edges=size - shields,
            purge_api_extra=extra + ('\nlog = "jetstream"' if cluster else ""),
            extra="\n" + cluster.toml(f"bench-{next(_runs)}") if cluster else "",
        )
        processes: list[NodeProcess] = []
        start_api(fleet, root, processes)
        nodes = await start_nodes(fleet, root, Applied())
        times = []
        answers = []
        wall = time.perf_counter()
        try:
            url = f"{api_url(fleet)}/v1/services/site/purge?wait=10"
            for n in range(purges):
                sent = time.perf_counter()
                status, body, _ = await api_call(
                    "POST", url, headers=AUTH, json={"tags": [f"bench-{n}"]}
                )
                answers.append((time.perf_counter() - sent) * 1000)
                if status != 200:
                    raise RuntimeError(f"purge {n}: {status} {body}")
                times.append(float(body["propagation_ms"]))
        finally:
            await asyncio.gather(*(node.stop() for node in nodes))
            for process in processes:
                process.stop()
        elapsed = time.perf_counter() - wall
    return {
        "nodes": size,
        "shields": shields,
        "p50": statistics.median(times),
        "p99": percentile(times, 99),
        "max": max(times),
        "answer_p50": statistics.median(answers),
        "answer_p99": percentile(answers, 99),
        "per_second": purges / elapsed,
    }


def verdict_cost() -> list[tuple[str, float]]:
    """Nanoseconds per verdict with 0 and 10,000 rules."""
    service = Service(name="site", hosts=("www.example.com",), origins=("http://o",))
    target = normalize_target("/products/shoes/item-4242?color=red&size=9", True, ())
    keys = ("product-4242", "category-shoes", "home")
    results = []
    for label, count in (("0 rules", 0), ("10,000 rules", 10_000)):
        rules = PurgeRules([service])
        for n in range(count):
            kind = n % 10
            if kind < 4:
                record = PurgeRecord(n + 1, "b", "site", urls=(f"/products/x/item-{n}",))
            elif kind < 7:
                record = PurgeRecord(n + 1, "b", "site", tags=(f"product-{n}-x",))
            elif kind < 9:
                record = PurgeRecord(
                    n + 1, "b", "site", prefixes=(f"/p{n % 97}/" + "d" * (n % 40),)
                )
            else:
                record = PurgeRecord(n + 1, "b", "site", urls=(f"https://www.example.com/a/{n}",))
            rules.apply(record, 1000.0 + n)
        for fetched_at, when in (
            (0.0, "fetched before every rule"),
            (1e9, "fetched after every rule"),
        ):
            call = functools.partial(
                rules.verdict, "site", "www.example.com", target, keys, fetched_at
            )
            number = 200_000
            best = min(timeit.repeat(call, number=number, repeat=5)) / number
            results.append((f"{label}, {when}", best * 1e9))
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purges", type=int, default=200)
    parser.add_argument("--sizes", default="3,30")
    parser.add_argument("--logs", default="sqlite,jetstream")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-verdict", action="store_true", help="skip the verdict figures")
    args = parser.parse_args()
    os.environ.setdefault("EDGESHIELD_NODE_SECRET", TEST_NODE_SECRET)
    logs = args.logs.split(",")
    if not args.no_verdict:
        print("## PurgeRules.verdict()\n\n| case | ns per verdict |\n|---|---|")
        for label, ns in verdict_cost():
            print(f"| {label} | {ns:.0f} |")
    print(f"\n## Propagation ({args.purges} purges, ?wait, one after another)\n")
    print(
        "| round | log | nodes | shields | p50 ms | p99 ms | max ms | answer p50 ms "
        "| answer p99 ms | purges/s |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    with contextlib.ExitStack() as stack:
        cluster = None
        if "jetstream" in logs:
            nats_root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cluster = NatsCluster(nats_root).start()
            stack.callback(cluster.stop)
        ratios: dict[int, list[tuple[float, float]]] = {}
        for round_ in range(1, args.rounds + 1):
            for size in (int(s) for s in args.sizes.split(",")):
                found = {}
                for kind in logs:
                    r = await propagation(
                        size, args.purges, cluster if kind == "jetstream" else None
                    )
                    found[kind] = r
                    print(
                        f"| {round_} | {kind} | {r['nodes']:.0f} | {r['shields']:.0f} "
                        f"| {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} "
                        f"| {r['answer_p50']:.1f} | {r['answer_p99']:.1f} "
                        f"| {r['per_second']:.0f} |",
                        flush=True,
                    )
                if {"sqlite", "jetstream"} <= found.keys():
                    js, sq = found["jetstream"], found["sqlite"]
                    ratios.setdefault(size, []).append(
                        (js["p50"] / sq["p50"], js["p99"] / sq["p99"])
                    )
        if ratios:
            print("\n| nodes | JetStream/SQLite p50 (per round) | p99 (per round) |\n|---|---|---|")
            for size, pairs in ratios.items():
                p50s = ", ".join(f"{a:.2f}" for a, _ in pairs)
                p99s = ", ".join(f"{b:.2f}" for _, b in pairs)
                print(f"| {size} | {p50s} | {p99s} |")


if __name__ == "__main__":
    asyncio.run(main())
