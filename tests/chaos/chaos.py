"""A bounded chaos run: kill nodes and workers under load while purging, check everything.

A real fleet (the purge API, 2 shields, 2 edges, edge1 with two worker processes) in
front of a real origin whose objects carry their own checksum. Four clients fetch
objects (whole and by range) from both edges and verify every byte; a purger changes
objects at the origin and purges them through the API (by URL or surrogate key, hard
or soft) every 1-2 s; a killer SIGKILLs a worker of edge1, a shield, or a whole edge
every few seconds and starts killed nodes again. At the end every purge must be
complete and saved by every node.

Counted, and required to be 0: corrupt bodies (bytes that are not the object's),
truncated bodies (shorter than announced, yet ended as if whole), stale answers after
a purge completed (an older version than the one purged to), lost purges (not
complete at the end, or missing from a node's saved rules). Counted and reported:
requests refused or cut by a node being killed, and 5xx answers.

    python -m tests.chaos.chaos --seconds 40        (make chaos)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.fleet_runner import HOST
from tests.support.origin import OriginServer, pattern_bytes
from tests.support.processes import NodeProcess
from tests.support.purge_fleet import PurgeFleet

WORKERS_EDGE = "edge1"
GROUPS = 4
SIZES = (2_000, 60_000, 400_000, 1_500_000)
MUST_BE_ZERO = ("corrupt", "truncated", "stale_after_purge", "lost_purges")


def body_of(path: str, version: int, size: int) -> bytes:
    """The object at `path` in `version`: a header, bytes, and a SHA-256 of both."""
    head = f"{path} v{version}\n".encode()
    seed = int(hashlib.blake2b(path.encode(), digest_size=4).hexdigest(), 16)
    payload = head + pattern_bytes(size, seed + version)
    return payload + hashlib.sha256(payload).hexdigest().encode() + b"\n"


def etag_of(path: str, version: int) -> str:
    """The origin's ETag for `path` in `version`."""
    return f'"{path.strip("/").replace("/", "-")}-v{version}"'


def version_of_etag(etag: str | None) -> int | None:
    """The version an ETag names, if it is one of ours."""
    if not etag or "-v" not in etag:
        return None
    with contextlib.suppress(ValueError):
        return int(etag.strip('"').rsplit("-v", 1)[1])
    return None


@dataclass
class ChaosState:
    """The objects, their versions, and what purges promised (and when)."""

    origin: OriginServer
    paths: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, group)
    versions: dict[str, int] = field(default_factory=dict)
    #: path -> [(monotonic time the purge completed, the version it purged to)]
    promised: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    purge_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def publish(self, path: str) -> None:
        """Make the origin answer `path` with its current version."""
        size, group = self.paths[path]
        version = self.versions[path]
        self.origin.route(
            path,
            headers={
                "Cache-Control": "max-age=30",
                "Content-Type": "application/octet-stream",
                "Surrogate-Key": f"group{group}",
            },
            body=body_of(path, version, size),
            etag=etag_of(path, version),
        )

    def required(self, path: str, at: float) -> int:
        """The oldest version a request sent at `at` may get."""
        return max((v for t, v in self.promised.get(path, []) if t <= at), default=0)

    def problem(self, kind: str, detail: str) -> None:
        """Count a failure that must not happen, keeping a few details."""
        self.counts[kind] += 1
        if len(self.problems) < 20:
            self.problems.append(f"{kind}: {detail}")


async def client(state: ChaosState, fleet: PurgeFleet, until: float, rng: random.Random) -> None:
    """Fetch random objects from random edges, whole or by range, verifying each."""
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        while time.monotonic() < until:
            path = rng.choice(list(state.paths))
            edge = rng.choice(fleet.edge_names)
            size = len(body_of(path, 0, state.paths[path][0]))
            headers = {"Host": HOST}
            wanted: tuple[int, int] | None = None
            if rng.random() < 0.2:
                start = rng.randrange(size)
                wanted = (start, min(size - 1, start + rng.randrange(1, 200_000)))
                headers["Range"] = f"bytes={wanted[0]}-{wanted[1]}"
            sent_at = time.monotonic()
            try:
                async with session.get(fleet.url(edge) + path, headers=headers) as response:
                    body = await response.read()
                    status, etag = response.status, response.headers.get("ETag")
                    length = response.headers.get("Content-Length")
            except aiohttp.ClientPayloadError:
                state.counts["cut"] += 1  # the node was killed mid-body: a visible cut
                continue
            except (aiohttp.ClientError, TimeoutError):
                state.counts["unavailable"] += 1
                await asyncio.sleep(0.05)
                continue
            state.counts["requests"] += 1
            if status >= 500:
                state.counts["errors_5xx"] += 1
                continue
            check(state, path, status, etag, length, body, wanted, sent_at)


def check(
    state: ChaosState,
    path: str,
    status: int,
    etag: str | None,
    length: str | None,
    body: bytes,
    wanted: tuple[int, int] | None,
    sent_at: float,
) -> None:
    """Verify one answer: its bytes, its length, and its version against purges."""
    size = state.paths[path][0]
    version = version_of_etag(etag)
    if status not in (200, 206) or version is None:
        state.problem("corrupt", f"{path}: status {status}, ETag {etag}")
        return
    if length is not None and int(length) != len(body):
        state.problem("truncated", f"{path}: {len(body)} of {length} bytes")
        return
    expected = body_of(path, version, size)
    if status == 206:
        assert wanted is not None
        if body != expected[wanted[0] : wanted[1] + 1]:
            state.problem("corrupt", f"{path} range {wanted}: bytes differ (v{version})")
            return
        state.counts["ranges_ok"] += 1
    elif body != expected:
        kind = "truncated" if expected.startswith(body) else "corrupt"
        state.problem(kind, f"{path}: {len(body)} bytes, v{version}")
        return
    required = state.required(path, sent_at)
    if version < required:
        state.problem("stale_after_purge", f"{path}: v{version} after a purge to v{required}")
        return
    state.counts["ok"] += 1


async def purger(state: ChaosState, fleet: PurgeFleet, until: float, rng: random.Random) -> None:
    """Change objects at the origin and purge them, by URL or tag, hard or soft."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < until:
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            soft = rng.random() < 0.4
            if rng.random() < 0.5:
                path = rng.choice(list(state.paths))
                changed, body = [path], {"urls": [path], "soft": soft}
            else:
                group = rng.randrange(GROUPS)
                changed = [p for p, (_, g) in state.paths.items() if g == group]
                body = {"tags": [f"group{group}"], "soft": soft}
            for path in changed:
                state.versions[path] += 1
                state.publish(path)
            try:
                code, answer = await fleet.purge(session, body, wait=20)
            except (aiohttp.ClientError, TimeoutError) as exc:
                state.problem("lost_purges", f"purge not accepted: {exc!r}")
                continue
            if code not in (200, 202):
                state.problem("lost_purges", f"purge answered {code}: {answer}")
                continue
            state.purge_ids.append(answer["id"])
            state.counts["purges"] += 1
            if answer["status"] != "complete":
                try:
                    await fleet.until_complete(session, answer["id"], timeout=30)
                except AssertionError as exc:
                    state.problem("lost_purges", str(exc)[:300])
                    continue
            done = time.monotonic()
            state.counts["purges_complete"] += 1
            for path in changed:
                state.promised.setdefault(path, []).append((done, state.versions[path]))


def worker_pids(fleet: PurgeFleet, name: str) -> list[int]:
    """The pids of a node's other workers (children of its worker 0)."""
    node = fleet.nodes[name]
    if node.proc is None or node.proc.poll() is not None:
        return []
    pid = node.proc.pid
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


async def killer(state: ChaosState, fleet: PurgeFleet, until: float, rng: random.Random) -> None:
    """SIGKILL a worker, a shield or an edge every few seconds; start nodes again."""
    while time.monotonic() < until - 3:
        await asyncio.sleep(rng.uniform(2.5, 4.5))
        choice = rng.choice(("worker", "worker", "shield", "edge"))
        if choice == "worker":
            pids = worker_pids(fleet, WORKERS_EDGE)
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                state.counts["killed_workers"] += 1
            continue
        names = fleet.shield_names if choice == "shield" else fleet.edge_names
        name = rng.choice(names)
        fleet.nodes[name].kill()
        state.counts[f"killed_{choice}s"] += 1
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        fleet.start_node(name)
        await asyncio.to_thread(fleet.wait_ready, name, 30.0)


def saved_ids(fleet: PurgeFleet, name: str) -> set[str]:
    """The purge ids in a node's saved rules file."""
    path = Path(fleet.config(name).cache_dir) / "purge-state" / "purge-rules.jsonl"
    ids = set()
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):
            ids.add(json.loads(line)["record"]["id"])
    return ids


async def run_chaos(seconds: float, root: Path, seed: int | None = None) -> dict[str, Any]:
    """Run the chaos for `seconds` in `root`; the counts (see MUST_BE_ZERO)."""
    rng = random.Random(seed)
    origin = OriginServer().start()
    started: list[NodeProcess] = []
    state = ChaosState(origin)
    for i in range(24):
        path = f"/chaos/{i}"
        state.paths[path] = (SIZES[i % len(SIZES)], i % GROUPS)
        state.versions[path] = 1
        state.publish(path)
    fleet = PurgeFleet(root, [origin.url], started, edges=2, shields=2, workers={WORKERS_EDGE: 2})
    try:
        await asyncio.to_thread(fleet.start)
        began = time.monotonic()
        until = began + seconds
        tasks = [
            *(client(state, fleet, until, random.Random(rng.random())) for _ in range(4)),
            purger(state, fleet, until, random.Random(rng.random())),
            killer(state, fleet, until, random.Random(rng.random())),
        ]
        await asyncio.gather(*tasks)
        for name in fleet.node_names:
            await asyncio.to_thread(fleet.wait_ready, name, 30.0)
        for name in fleet.node_names:
            missing = set(state.purge_ids) - saved_ids(fleet, name)
            for purge_id in sorted(missing):
                state.problem("lost_purges", f"{name} did not save purge {purge_id}")
        report: dict[str, Any] = {
            "seconds": round(time.monotonic() - began, 1),
            **{kind: 0 for kind in MUST_BE_ZERO},
            **dict(state.counts),
            "problems": state.problems,
        }
        return report
    finally:
        fleet.stop()
        origin.close()


def main(argv: list[str] | None = None) -> int:
    """Run the chaos and print its report; exit 1 unless every MUST_BE_ZERO is 0."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.chaos")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="edgeshield-chaos-"))
    report = asyncio.run(run_chaos(args.seconds, root, args.seed))
    print(json.dumps(report, indent=2))
    if all(report[kind] == 0 for kind in MUST_BE_ZERO):
        shutil.rmtree(root, ignore_errors=True)
        return 0
    print(f"the fleet's logs and state are kept in {root}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
