"""Hit throughput of one edge with no purge rules and with 10,000 active rules.

Not a test: it prints a Markdown table (and with `--write FILE` also records it with
the command and the date). Run from the repository root:

    .venv/bin/python bench/purge_hits.py [--rounds 3] [--duration 5] [--write FILE]

What it does, all on 127.0.0.1:
- starts a counting origin (in this process) and two small fleets side by side, each
  a real purge API process and one real edge process (one worker, no shields);
- warms the same hot object (with three surrogate keys) in both edges, and checks it
  is a hit on both;
- pushes 10,000 purge rules through the second fleet's API (10 purges of 1,000
  items: URLs, absolute URLs, surrogate keys and prefixes of 40 distinct lengths),
  none of which covers the hot object, each waited for until the edge acknowledged;
  the hot object was stored before every rule, so each hit consults every index (the
  slow path of `PurgeRules.verdict()`), and it must still be a hit;
- runs `wrk -t1 -c32 -dNs` (or, without /usr/bin/wrk, an aiohttp load loop) against
  each edge in turn, order alternating, N rounds, and reports medians and the ratio.
  Goal: throughput with 10,000 rules within 10 % of none.

Every process it starts it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from tests.support.fleet_runner import HOST, client_session, get  # noqa: E402
from tests.support.origin import OriginServer  # noqa: E402
from tests.support.processes import NodeProcess  # noqa: E402
from tests.support.purge_fleet import PurgeFleet  # noqa: E402

WRK = "/usr/bin/wrk"
HOT_PATH = "/products/shoes/item-4242"
HOT_KEYS = ("product-4242", "category-shoes", "home")
RULES = 10_000
PER_PURGE = 1_000


def rule_items(first: int, count: int) -> dict[str, list[str]]:
    """A purge body of `count` items numbered from `first`, none covering the hot object.

    40 % paths, 10 % absolute URLs, 30 % surrogate keys, 20 % prefixes (distinct, of
    40 distinct lengths, none a prefix of the hot path).
    """
    body: dict[str, list[str]] = {"urls": [], "prefixes": [], "tags": []}
    for n in range(first, first + count):
        kind = n % 10
        if kind < 4:
            body["urls"].append(f"/products/x/item-{n}")
        elif kind < 5:
            body["urls"].append(f"https://{HOST}/a/{n}")
        elif kind < 8:
            body["tags"].append(f"product-{n}-x")
        else:
            body["prefixes"].append(f"/p{n}/" + "d" * (n % 40))
    return body


def rules_on_disk(fleet: PurgeFleet, edge: str) -> int:
    """How many rule items the edge has applied, from its purge state file."""
    path = Path(fleet.config(edge).cache_dir) / "purge-state" / "purge-rules.jsonl"
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)["record"]
        total += len(record["urls"]) + len(record["prefixes"]) + len(record["tags"])
    return total


async def warm(fleet: PurgeFleet, edge: str) -> str:
    """Fetch the hot object through `edge` until it is a hit; its Cache-Status."""
    async with client_session() as session:
        for _ in range(50):
            reply = await get(session, fleet.url(edge), HOT_PATH)
            if reply.status == 200 and reply.cache_status[-1].startswith(f"{edge}; hit"):
                return reply.cache_status[-1]
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{HOT_PATH} never became a hit on {edge}")


async def push_rules(fleet: PurgeFleet) -> float:
    """Push RULES rule items through the API; seconds it took, every purge complete."""
    started = time.perf_counter()
    async with client_session(timeout=60) as session:
        for first in range(0, RULES, PER_PURGE):
            code, status = await fleet.purge(session, rule_items(first, PER_PURGE), wait=30)
            if code != 200:
                raise RuntimeError(f"purge of items {first}..: {code} {status}")
    return time.perf_counter() - started


def run_wrk(url: str, duration: float) -> float:
    """Requests per second `wrk -t1 -c32` measured (non-2xx answers are an error)."""
    argv = [WRK, "-t1", "-c32", f"-d{duration:g}s", "-H", f"Host: {HOST}", url]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if result.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed:\n{result.stdout}\n{result.stderr}")
    if "Non-2xx" in result.stdout or "Socket errors" in result.stdout:
        raise RuntimeError(f"wrk saw errors:\n{result.stdout}")
    return float(match.group(1))


async def run_loop(url: str, duration: float, concurrency: int = 32) -> float:
    """Requests per second of an aiohttp keep-alive load loop (no wrk on this machine)."""
    done = 0
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.get(url, headers={"Host": HOST}) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"load loop got {response.status}")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def measure(url: str, duration: float) -> float:
    """Requests per second against `url`, by wrk when installed."""
    if os.path.exists(WRK):
        return run_wrk(url, duration)
    return asyncio.run(run_loop(url, duration))


def bench(rounds: int, duration: float) -> tuple[str, dict[str, list[float]], float]:
    """Start both fleets, load the rules, run the rounds; (tool, results, push seconds)."""
    origin = OriginServer().start()
    headers = {
        "Cache-Control": "max-age=3600",
        "Content-Type": "application/octet-stream",
        "Surrogate-Key": " ".join(HOT_KEYS),
    }
    origin.route(HOT_PATH, headers=headers, body=bytes(range(256)) * 4)
    started: list[NodeProcess] = []
    results: dict[str, list[float]] = {"0 rules": [], f"{RULES:,} rules": []}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            plain = PurgeFleet(Path(tmp) / "plain", [origin.url], started, edges=1, shields=0)
            ruled = PurgeFleet(Path(tmp) / "ruled", [origin.url], started, edges=1, shields=0)
            plain.start()
            ruled.start()
            for fleet in (plain, ruled):
                asyncio.run(warm(fleet, "edge1"))
            pushed = asyncio.run(push_rules(ruled))
            applied = rules_on_disk(ruled, "edge1")
            if applied != RULES:
                raise RuntimeError(f"the edge holds {applied} rule items, not {RULES}")
            # stored before every rule, covered by none: still a hit, every index consulted
            asyncio.run(warm(ruled, "edge1"))
            if origin.count(HOT_PATH) != 2:
                raise RuntimeError(f"the origin saw {origin.count(HOT_PATH)} fetches, not 2")
            targets = [
                ("0 rules", plain.url("edge1") + HOT_PATH),
                (f"{RULES:,} rules", ruled.url("edge1") + HOT_PATH),
            ]
            for _, url in targets:  # a short run each first, so neither starts cold
                measure(url, 1)
            for number in range(rounds):
                order = targets if number % 2 == 0 else targets[::-1]
                for label, url in order:
                    rps = measure(url, duration)
                    results[label].append(rps)
                    print(f"round {number + 1} {label:14} {rps:10,.0f} req/s", file=sys.stderr)
        finally:
            for process in reversed(started):
                process.stop()
            origin.close()
    tool = "wrk -t1 -c32" if os.path.exists(WRK) else "aiohttp load loop, 32 connections"
    return tool, results, pushed


def table(results: dict[str, list[float]]) -> tuple[str, float]:
    """The Markdown table of medians, and the ratio (with rules / without)."""
    base = statistics.median(results["0 rules"])
    lines = ["| active rules | rounds (req/s) | median req/s | vs 0 rules |", "|---|---|---|---|"]
    for label, values in results.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {label} | {rounds} | {median:,.0f} | {median / base:.1%} |")
    ruled = statistics.median(results[f"{RULES:,} rules"])
    return "\n".join(lines), ruled / base


def main() -> int:
    """Parse arguments, run, print (and optionally record) the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--write", type=Path, help="record the results in this Markdown file")
    args = parser.parse_args()
    tool, results, pushed = bench(args.rounds, args.duration)
    text, ratio = table(results)
    verdict = "met" if ratio >= 0.9 else "NOT met"
    summary = (
        f"{text}\n\nGoal: with {RULES:,} rules within 10 % of none — {verdict} "
        f"({ratio:.1%}). Pushing the {RULES:,} rules (10 purges of {PER_PURGE:,} items, "
        f"each waited for) took {pushed:.1f} s."
    )
    print(summary)
    if args.write:
        command = shlex.join([".venv/bin/python", "bench/purge_hits.py", *sys.argv[1:]])
        args.write.write_text(
            _document(summary, tool, command, args.rounds, args.duration), encoding="utf-8"
        )
    return 0


def _document(summary: str, tool: str, command: str, rounds: int, duration: float) -> str:
    today = datetime.date.today().isoformat()
    return f"""# Hit throughput with active purge rules

    {command}

{today}, {platform.system()} {platform.machine()}, {os.cpu_count()} cores,
Python {platform.python_version()}; loopback only.

Two fleets side by side, each a real purge API process and one real edge process (one
worker, no shields) in front of the same origin. Both edges hold the same hot object
(1 KiB, three surrogate keys), stored *before* any rule. The second fleet's edge
then receives {RULES:,} purge rules through its API — paths, absolute URLs, surrogate
keys and prefixes of 40 distinct lengths, none covering the hot object — so every
hit there consults every index of `PurgeRules.verdict()` (the slow path). Load:
{tool}, {duration:g} s per run, {rounds} rounds, the two edges in alternating order;
the figure is the median of the rounds.

{summary}

Lookup cost alone (no server) is in docs/benchmarks.md: about 2 µs per verdict
with 10,000 rules on the slow path, against tens of microseconds per hit.

Run it on an idle machine: the edge and wrk share its two cores, and a run made
while another benchmark was loading them swung by 30 % from round to round.
"""


if __name__ == "__main__":
    sys.exit(main())
