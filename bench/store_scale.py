"""Does an edge cost the same with 10^3 objects stored as with 10^6? Hits, misses,
purge application, restart time to serving and RSS per stored object, by store size.

Not a test: it prints a Markdown table (and with `--write FILE` also records it with
the command and the date). Run from the repository root:

    .venv/bin/python bench/store_scale.py [--counts 1000,1000000] [--size 1k]
                                          [--duration 5] [--rounds 2] [--write FILE]
    .venv/bin/python bench/store_scale.py --counts 100,10000 --size 1m
    .venv/bin/python bench/store_scale.py --counts 1000,1000000 --size json-1k
    .venv/bin/python bench/store_scale.py --counts 1000,1000000 --nginx
    .venv/bin/python bench/store_scale.py --counts 1000,1000000 --hold   # for a profiler

For each count, all on 127.0.0.1, in a fresh directory:
- starts a fast static origin (nginx, `bench/misses.py`) and the edge as a real
  process (`python -m cli.main edge`, `--workers` workers, no shields), asks it for
  one object so that it stores it, and stops it;
- fills the store directly (a `DiskStore` in this process, the same code the edge
  runs, 64 commits at a time) with `count` copies of that object under new URLs
  (`?u=0` ... `?u=count-1`), and reports the fill rate;
- starts the edge again and times how long until it answers a stored URL with a hit
  (restart to serving), then reads the RSS of its processes (nothing in the memory
  tier yet);
- leaves that edge running and prepares the next count the same way; then, in
  each round, runs `wrk -t2 -c32` with a Lua script for hits on a hot set (1,000
  URLs) and hits uniform over every stored URL, each on every edge right after
  the other (paired, so a change in the shared machine's load falls on every
  store size alike; the sizes' order alternates from round to round);
- with `--nginx`, also starts nginx proxy_cache (2 workers, `bench/hits.py`'s
  configuration with a keys_zone and max_size large enough for `count` objects) on the
  same origin, fills it with the same URLs through its front door (wrk, every URL
  once) and measures its hot-set and uniform hits in the same rounds, so the table
  says how flat nginx itself is from one store size to the other;
- pushes purges by URL to the node's purge intake (`POST /admin/purge`, as the purge
  API does) one at a time and times each until the node answers that it applied it,
  each store size's in turn; then checks a purged URL is no longer a hit;
- last, the rounds of misses (new URLs, fetched from the origin): each stores an
  object, so taken before, they would grow the smallest store twentyfold and fill
  its memory tier with other objects than the ones its hits read.

With `--hold` it stops after the edges are filled and serving: it prints each one's
port and process ids and waits for Ctrl-C, so that a profiler can be attached under
a load of one's own.

Check `df` first: 10^6 objects of 1 KiB take about 4.5 GiB (a 4 KiB block each plus
the index), 10^4 of 1 MiB about 10 GiB. Every process it starts it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import http.client
import json
import os
import re
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hits  # a sibling script, not a package
import misses

from edge.cache.purge import PurgeRules
from edge.front.h1_hits import ReadyHeads
from edge.hotlane import HotLane
from edge.metrics import NodeMetrics
from edge.options import EngineOptions
from edge.responding import Responder
from edge.store import BodyRef, DiskStore

#: `--size`: the object every stored copy is made from. `json-1k` is compressible:
#: every copy is stored with the seed's br and gzip variants as the edge made them,
#: and asked for with a browser's Accept-Encoding (`ACCEPT`)
SIZES = {"1k": "/bin/1k", "100k": "/bin/100k", "1m": "/bin/1m", "json-1k": "/json/1k"}
#: the Accept-Encoding every request for a `--size` sends (none for the binary ones)
ACCEPT = {"json-1k": "gzip, deflate, br"}
HOT = 1000
#: the edge's name (its Via and Cache-Status, and so its ready answers' heads)
NODE_NAME = "edge1"
FILL_CONCURRENCY = 64

#: wrk's Lua: `mode` is "hot", "uniform" or "miss"; `count` the URLs stored
LUA = (
    hits.THREAD_SEEDS_LUA
    + """
local counter = 0
function request()
  local u
  if mode == "miss" then
    counter = counter + 1
    u = "m-" .. prefix .. "-" .. tid .. "-" .. counter
  elseif mode == "hot" then
    u = tostring(math.random(0, hot - 1))
  else
    u = tostring(math.random(0, count - 1))
  end
  return wrk.format(nil, path .. "?u=" .. u)
end
"""
)

#: wrk's Lua filling nginx: each of `threads` threads asks for its share of `?u=0` ...
#: `?u=count-1` once (indexes `tid-1`, `tid-1+threads`, ...) and stops when answered
FILL_LUA = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  nextu = tid - 1
  share = math.floor((count - tid) / nthreads) + 1
  answered = 0
end
function request()
  local u = nextu
  nextu = nextu + nthreads
  if u >= count then
    u = tid - 1
  end
  return wrk.format(nil, path .. "?u=" .. u)
end
function response(status, headers, body)
  answered = answered + 1
  if answered == share + 4 * conns then
    local f = io.open(marker .. tid, "w")
    f:close()
    wrk.thread:stop()
  end
end
"""

#: nginx's keys_zone: about 8,000 keys a MiB (nginx's documentation), with room
NGINX_KEYS_PER_MIB = 4000


class ScaleServers(hits.Servers):
    """`bench/hits.py`'s servers, with nginx's cache sized for `count` objects."""

    count: int = 0

    def _nginx_conf(self, prefix: Path, workers: int, brotli: bool) -> str:
        conf = super()._nginx_conf(prefix, workers, brotli)
        zone = max(32, self.count // NGINX_KEYS_PER_MIB)
        sized = conf.replace(
            "keys_zone=bench:32m max_size=4g", f"keys_zone=bench:{zone}m max_size=1024g"
        )
        if sized == conf:
            raise RuntimeError("bench/hits.py's nginx configuration changed: keys_zone not found")
        return sized


@dataclasses.dataclass
class Result:
    """What one store size measured."""

    count: int
    fill_s: float = 0.0
    disk_bytes: int = 0
    restart_s: float = 0.0
    rss_kib: int = 0
    rss_file_kib: int = 0
    rss_after_kib: int = 0
    hot: list[float] = dataclasses.field(default_factory=list)
    uniform: list[float] = dataclasses.field(default_factory=list)
    miss: list[float] = dataclasses.field(default_factory=list)
    purge_ms: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    nginx_fill_s: float = 0.0
    nginx_hot: list[float] = dataclasses.field(default_factory=list)
    nginx_uniform: list[float] = dataclasses.field(default_factory=list)
    #: the edge's processes' CPU per hit (µs, user and system), per hit run
    hot_cpu: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    uniform_cpu: list[tuple[float, float]] = dataclasses.field(default_factory=list)


class Edge:
    """The edge process of one store size: its fleet file, start and stop."""

    def __init__(
        self,
        servers: hits.Servers,
        cache_dir: Path,
        cache_size: str,
        workers: int,
        memory_size: str | None = None,
        scrub_rate: str | None = None,
    ) -> None:
        self.servers = servers
        self.cache_dir = cache_dir
        self.port, self.admin_port = hits.free_port(), hits.free_port()
        self.fleet = servers.tmp / "fleet.toml"
        self.fleet.write_text(
            "\n".join(
                [
                    "[[regions]]",
                    'name = "local"',
                    "latitude = 0.0",
                    "longitude = 0.0",
                    "",
                    "[[services]]",
                    'name = "bench"',
                    f'hosts = ["{hits.HOST}"]',
                    f'origins = ["http://127.0.0.1:{servers.origin_port}"]',
                    "",
                    "[[edges]]",
                    f'name = "{NODE_NAME}"',
                    'region = "local"',
                    f'listen = "127.0.0.1:{self.port}"',
                    f'admin_listen = "127.0.0.1:{self.admin_port}"',
                    f'cache_dir = "{cache_dir}"',
                    f'cache_size = "{cache_size}"',
                    f'memory_size = "{memory_size}"' if memory_size else "",
                    f'scrub_rate = "{scrub_rate}"' if scrub_rate else "",
                    f"workers = {workers}",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self.child: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start the edge; seconds until its listening port accepts."""
        env = {"EDGESHIELD_NODE_SECRET": self.servers.edge_secret, "EDGESHIELD_ACCESS_LOG": "0"}
        argv = [sys.executable, "-m", "cli.main", "edge", "--config", str(self.fleet)]
        started = time.perf_counter()
        log = self.servers.tmp / "edge.log"
        self.child = self.servers.procs.start([*argv, "--node", "edge1"], log, env)
        hits.wait_listening(self.port, self.child, log, 120)
        return time.perf_counter() - started

    def stop(self) -> None:
        """SIGTERM the edge and wait (it closes its store)."""
        if self.child is not None:
            self.servers.procs.stop(self.child)
            self.child = None

    def pids(self) -> list[int]:
        """The edge's processes."""
        self.servers.edge = self.child
        return self.servers.edge_pids()


def get(port: int, path: str) -> tuple[int, str]:
    """(status, Cache-Status) of a GET."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": hits.HOST})
        reply = conn.getresponse()
        reply.read()
        return reply.status, reply.getheader("Cache-Status") or ""
    finally:
        conn.close()


def coding_of(port: int, path: str, accept: str) -> str:
    """The Content-Encoding of a GET's answer with `accept` as its Accept-Encoding."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": hits.HOST, "Accept-Encoding": accept})
        reply = conn.getresponse()
        reply.read()
        return reply.getheader("Content-Encoding") or "identity"
    finally:
        conn.close()


def is_hit(cache_status: str) -> bool:
    """Whether the edge's (last) Cache-Status entry says hit."""
    return bool(cache_status) and "hit" in cache_status.split(",")[-1]


async def fill(directory: Path, count: int, seed_marker: str) -> None:
    """Store `count` copies of the seed object under `?u=0` ... in `directory`."""
    store = await DiskStore.open(str(directory), max_bytes=1 << 50, memory_bytes=1 << 20)
    # the ready answers the edge's own front makes when it stores an object
    metrics = NodeMetrics(NODE_NAME, "edge")
    options = EngineOptions(node_name=NODE_NAME)
    responder = Responder(options, store, metrics, time.time, {})
    lane = HotLane(store, PurgeRules(()), metrics, time.time, responder)
    store.ready_maker = ReadyHeads(lane, NODE_NAME)
    try:
        keys = [k for k in await store.keys() if seed_marker in k]
        if len(keys) != 1:
            raise RuntimeError(f"expected one seeded object, found {keys}")
        seed = await store.get(keys[0])
        assert seed is not None
        bodies = {coding: body_of(ref) for coding, ref in seed.bodies.items()}
        body = bodies.pop("identity")
        meta = seed.meta

        async def one(n: int) -> None:
            key = keys[0].replace(seed_marker, str(n))
            new_meta = dataclasses.replace(
                meta,  # type: ignore[type-var]
                target=meta.target.replace(seed_marker, str(n)),  # type: ignore[attr-defined]
            )
            writer = store.begin(key)
            for pos in range(0, len(body), 256 * 1024):
                await writer.write(body[pos : pos + 256 * 1024])
            await writer.commit(new_meta)
            if getattr(new_meta, "compressible", False):
                # its variants, as the edge adds them once they are made
                paths: dict[str, str] = {}
                for coding, data in bodies.items():
                    paths[coding] = store.tmp_path("." + coding)
                    Path(paths[coding]).write_bytes(data)
                await store.add_encodings(key, paths)

        done = 0
        last = time.perf_counter()
        for start in range(0, count, FILL_CONCURRENCY):
            await asyncio.gather(
                *(one(n) for n in range(start, min(count, start + FILL_CONCURRENCY)))
            )
            done = min(count, start + FILL_CONCURRENCY)
            if time.perf_counter() - last > 10:
                last = time.perf_counter()
                print(f"  filled {done:,} of {count:,}", file=sys.stderr, flush=True)
    finally:
        await store.close()


def body_of(ref: BodyRef) -> bytes:
    """A stored body's bytes (kept in memory, or read from its file)."""
    if ref.data is not None:
        return ref.data
    assert ref.path is not None
    return Path(ref.path).read_bytes()


def fill_nginx(servers: hits.Servers, path: str, count: int, tmp: Path) -> float:
    """Ask nginx for `?u=0` ... `?u=count-1` once each (misses it stores); seconds taken.
    Checks afterwards that a sample of them are hits."""
    script = tmp / "nginx-fill.lua"
    marker = tmp / "nginx-filled-"
    script.write_text(
        f'path = "{path}"\ncount = {count}\nnthreads = 2\nconns = 16\n'
        f'marker = "{marker}"\n{FILL_LUA}',
        encoding="utf-8",
    )
    started = time.perf_counter()
    argv = ["wrk", "-t2", "-c32", "-d3600s", "-H", f"Host: {hits.HOST}", "-s", str(script)]
    with subprocess.Popen(
        [*argv, f"http://127.0.0.1:{servers.nginx_port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as wrk:
        try:
            while not all(Path(f"{marker}{tid}").exists() for tid in (1, 2)):
                if wrk.poll() is not None or time.perf_counter() - started > 3000:
                    raise RuntimeError(f"filling nginx failed: {wrk.communicate()[0]}")
                time.sleep(0.2)  # wrk's threads write a file each when done: poll for it
            elapsed = time.perf_counter() - started
        finally:
            wrk.send_signal(signal.SIGINT)
            out = wrk.communicate(timeout=30)[0]
    if "Non-2xx" in out:
        raise RuntimeError(f"filling nginx failed:\n{out}")
    for n in sorted({0, count // 3, count // 2, count - 1}):
        reply = hits.http_get(servers.nginx_port, f"{path}?u={n}")
        if reply.status != 200 or reply.headers.get("x-cache-status", "").upper() != "HIT":
            raise RuntimeError(f"nginx: ?u={n} is not a hit after the fill: {reply.headers}")
    return elapsed


def run_wrk(
    port: int,
    path: str,
    mode: str,
    count: int,
    duration: float,
    tmp: Path,
    accept: str | None = None,
) -> float:
    """req/s of one wrk run in `mode` (`accept`: every request's Accept-Encoding);
    raises if wrk fails or answers were errors."""
    return run_wrk_counted(port, path, mode, count, duration, tmp, accept)[0]


def run_wrk_counted(
    port: int,
    path: str,
    mode: str,
    count: int,
    duration: float,
    tmp: Path,
    accept: str | None = None,
) -> tuple[float, int]:
    """`run_wrk`, and the number of requests wrk completed."""
    prefix = secrets.token_hex(4)
    script = tmp / f"scale-{prefix}.lua"
    script.write_text(
        f'path = "{path}"\nprefix = "{prefix}"\nmode = "{mode}"\n'
        f"count = {count}\nhot = {min(HOT, count)}\n{LUA}",
        encoding="utf-8",
    )
    argv = ["wrk", "-t2", "-c32", f"-d{duration:g}s", "-H", f"Host: {hits.HOST}"]
    if accept is not None:
        argv += ["-H", f"Accept-Encoding: {accept}"]
    result = hits.run_quiet([*argv, "-s", str(script), f"http://127.0.0.1:{port}/"])
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if result.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed:\n{result.stdout}\n{result.stderr}")
    if "Non-2xx" in result.stdout or "Socket errors" in result.stdout:
        print(f"wrk reported errors in {mode}:\n{result.stdout}", file=sys.stderr)
    done = re.search(r"(\d+) requests in", result.stdout)
    return float(match.group(1)), int(done.group(1)) if done else 0


def cpu_ticks(pids: Sequence[int]) -> tuple[int, int]:
    """User and system CPU time of processes `pids` so far, in clock ticks."""
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    return user, system


def push_purge(edge: Edge, seq: int, url: str) -> float:
    """POST one purge record to the node's intake; ms until it answers applied."""
    record = {"seq": seq, "id": f"bench-{seq}", "service": "bench", "urls": [url]}
    body = json.dumps({"records": [record]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", edge.admin_port, timeout=60)
    started = time.perf_counter()
    try:
        conn.request(
            "POST",
            "/admin/purge",
            body=body,
            headers={
                "Authorization": f"Bearer {edge.servers.edge_secret}",
                "Content-Type": "application/json",
            },
        )
        reply = conn.getresponse()
        answer = reply.read()
    finally:
        conn.close()
    elapsed = (time.perf_counter() - started) * 1000
    if reply.status != 200 or json.loads(answer).get("applied_seq") != seq:
        raise RuntimeError(f"purge push answered {reply.status}: {answer[:200]!r}")
    return elapsed


def rss_kib(pids: Sequence[int], field: str = "RssAnon") -> int:
    """Total `field` of /proc/PID/status over `pids` (KiB).

    RssAnon is the process's own memory; RssFile counts pages of files it maps,
    here the SQLite index (diskcache maps it): the kernel's page cache, shared and
    dropped under memory pressure, reported apart.
    """
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


def du_bytes(path: Path) -> int:
    """Bytes the files under `path` occupy on disk (blocks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def prepare(
    args: argparse.Namespace, count: int, tmp: Path, procs: hits.Processes
) -> tuple[Result, Edge]:
    """One store size made ready in `tmp`: its origin, a store of `count` objects,
    the edge restarted on it (timed) and serving; the edge is left running."""
    notes: list[str] = []
    servers = ScaleServers(tmp, procs, notes)
    servers.count = count
    misses.start_static_origin(servers)
    path = SIZES[args.size]
    cache_dir = tmp / "edge-cache"
    edge = Edge(
        servers, cache_dir, args.cache_size, args.workers, args.memory_size, args.scrub_rate
    )
    result = Result(count)
    edge.start()
    marker = f"seed{secrets.token_hex(3)}"
    for _ in range(50):
        status, cache_status = get(edge.port, f"{path}?u={marker}")
        if status == 200 and is_hit(cache_status):
            break
        time.sleep(0.1)  # the seed's commit lands after its answer: poll for it
    else:
        raise RuntimeError("the seed object never became a hit")
    if args.size in ACCEPT:
        for _ in range(50):
            if coding_of(edge.port, f"{path}?u={marker}", "br") == "br":
                break
            time.sleep(0.1)  # its variants are made after its commit: poll for them
        else:
            raise RuntimeError("the seed object never got its br variant")
    edge.stop()

    started = time.perf_counter()
    asyncio.run(fill(cache_dir / "objects", count, marker))
    result.fill_s = time.perf_counter() - started
    result.disk_bytes = du_bytes(cache_dir / "objects")
    print(f"{count:,}: filled in {result.fill_s:.1f} s", file=sys.stderr, flush=True)

    started = time.perf_counter()
    edge.start()
    probe = f"{path}?u={count // 2}"
    while True:
        status, cache_status = get(edge.port, probe)
        if status == 200 and is_hit(cache_status):
            break
        if time.perf_counter() - started > 300:
            raise RuntimeError(f"no hit after restart: {status} {cache_status}")
        time.sleep(0.02)
    result.restart_s = time.perf_counter() - started
    result.rss_kib = rss_kib(edge.pids())
    result.rss_file_kib = rss_kib(edge.pids(), "RssFile")
    print(
        f"{count:,}: serving {result.restart_s:.2f} s after start, RssAnon "
        f"{result.rss_kib / 1024:.1f} MiB, RssFile {result.rss_file_kib / 1024:.1f} MiB",
        file=sys.stderr,
        flush=True,
    )
    if args.nginx:
        servers.start_nginx(2, False)
        result.nginx_fill_s = fill_nginx(servers, path, count, tmp)
        print(
            f"{count:,}: nginx filled in {result.nginx_fill_s:.1f} s", file=sys.stderr, flush=True
        )
    return result, edge


def hit_round(args: argparse.Namespace, edges: Sequence[tuple[Result, Edge, Path]]) -> None:
    """One round of hits: hot, then uniform, each measured on every store size right
    after the other (paired: the sizes a ratio compares are measured seconds apart,
    not a whole round apart), then nginx's the same way."""
    path = SIZES[args.size]
    accept = ACCEPT.get(args.size)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    for mode in ("hot", "uniform"):
        for result, edge, tmp in edges:
            pids = edge.pids()
            user, system = cpu_ticks(pids)
            rate, done = run_wrk_counted(
                edge.port, path, mode, result.count, args.duration, tmp, accept
            )
            user_after, system_after = cpu_ticks(pids)
            getattr(result, mode).append(rate)
            getattr(result, f"{mode}_cpu").append(
                (
                    (user_after - user) * tick_us / max(done, 1),
                    (system_after - system) * tick_us / max(done, 1),
                )
            )
    if args.nginx:
        for mode in ("hot", "uniform"):
            for result, edge, tmp in edges:
                port = edge.servers.nginx_port
                rate = run_wrk(port, path, mode, result.count, args.duration, tmp, accept)
                getattr(result, f"nginx_{mode}").append(rate)
    for result, _edge, _tmp in edges:
        nginx = ""
        if args.nginx:
            nginx = (
                f"; nginx hot {result.nginx_hot[-1]:,.0f} uniform {result.nginx_uniform[-1]:,.0f}"
            )
        (hot_user, hot_system), (uniform_user, uniform_system) = (
            result.hot_cpu[-1],
            result.uniform_cpu[-1],
        )
        cpu = (
            f"; edge CPU µs per hit (user + system): hot {hot_user:.1f} + {hot_system:.1f}, "
            f"uniform {uniform_user:.1f} + {uniform_system:.1f}"
        )
        print(
            f"{result.count:,}: hot {result.hot[-1]:,.0f} uniform {result.uniform[-1]:,.0f} "
            f"req/s{nginx}{cpu}",
            file=sys.stderr,
            flush=True,
        )


def miss_round(args: argparse.Namespace, edges: Sequence[tuple[Result, Edge, Path]]) -> None:
    """One round of misses on every store size, one after the other. Taken after
    every hit round and the purges: each miss stores an object, so a store that
    took misses no longer holds the count its hits are reported for (a run of
    misses grows the smallest store twentyfold, and fills its memory tier with
    other objects than the ones its hits read)."""
    path = SIZES[args.size]
    accept = ACCEPT.get(args.size)
    for result, edge, tmp in edges:
        result.miss.append(
            run_wrk(edge.port, path, "miss", result.count, args.duration, tmp, accept)
        )
        print(f"{result.count:,}: miss {result.miss[-1]:,.0f} req/s", file=sys.stderr, flush=True)


def purges(args: argparse.Namespace, edges: Sequence[tuple[Result, Edge, Path]]) -> None:
    """RssAnon after the hits, then purges by URL timed until applied, each store
    size's in turn (the order alternating, as the hit rounds', so that a slower
    minute of the machine does not fall on one size's purges alone), and a check
    that a purged URL is no longer a hit."""
    path = SIZES[args.size]
    for result, edge, _tmp in edges:
        result.rss_after_kib = rss_kib(edge.pids())
    for seq in range(1, args.purges + 1):
        target = f"http://{hits.HOST}{path}?u={seq}"
        for result, edge, _tmp in edges if seq % 2 else edges[::-1]:
            result.purge_ms.append(push_purge(edge, seq, target))
    for _result, edge, _tmp in edges:
        _status, cache_status = get(edge.port, f"{path}?u=1")
        if is_hit(cache_status):
            raise RuntimeError(f"a purged URL is still a hit: {cache_status}")


def measure_all(
    args: argparse.Namespace, counts: Sequence[int], procs: hits.Processes
) -> list[Result]:
    """Every store size made ready and left serving, then the rounds of hits (each
    kind on every size in turn, `hit_round`), the purges, and the rounds of misses
    (`miss_round`), last because they add objects."""
    edges: list[tuple[Result, Edge, Path]] = []
    with contextlib.ExitStack() as stack:
        try:
            for count in counts:
                tmp = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeshield-scale-"))
                )
                result, edge = prepare(args, count, tmp, procs)
                edges.append((result, edge, tmp))
            if args.hold:
                hold(edges)
                return [result for result, _edge, _tmp in edges]
            # the sizes' order alternates, so a drift of the machine within a round
            # does not fall on one size each time
            for round_no in range(args.rounds):
                hit_round(args, edges if round_no % 2 == 0 else edges[::-1])
            purges(args, edges)
            for round_no in range(args.rounds):
                miss_round(args, edges if round_no % 2 == 0 else edges[::-1])
        finally:
            for _result, edge, _tmp in edges:
                edge.stop()
            procs.stop_all()
    return [result for result, _edge, _tmp in edges]


def table(results: Sequence[Result], args: argparse.Namespace) -> str:
    """The Markdown table, one row per store size, and the flatness of each figure."""
    lines = [
        "| objects stored | fill (objects/s) | on disk | restart to serving | RssAnon at "
        "start | RssFile at start | RssAnon after the hits | hot hits/s | uniform hits/s "
        "| misses/s | purge applied (ms, median / p90) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        purge = sorted(r.purge_ms)
        lines.append(
            f"| {r.count:,} | {r.count / r.fill_s:,.0f} | {r.disk_bytes / 2**30:.2f} GiB "
            f"| {r.restart_s:.2f} s | {r.rss_kib / 1024:.1f} MiB | "
            f"{r.rss_file_kib / 1024:.1f} MiB | "
            f"{r.rss_after_kib / 1024:.1f} MiB | {statistics.median(r.hot):,.0f} | "
            f"{statistics.median(r.uniform):,.0f} | {statistics.median(r.miss):,.0f} | "
            f"{statistics.median(purge):.1f} / {purge[int(len(purge) * 0.9)]:.1f} |"
        )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        per_object = (large.rss_kib - small.rss_kib) * 1024 / (large.count - small.count)
        per_file = (large.rss_file_kib - small.rss_file_kib) * 1024 / (large.count - small.count)
        lines.append("")
        lines.append(
            f"Largest against smallest store: hot hits {_ratio(large.hot, small.hot)}, uniform "
            f"hits {_ratio(large.uniform, small.uniform)}, misses "
            f"{_ratio(large.miss, small.miss)}, purge "
            f"{statistics.median(large.purge_ms) / statistics.median(small.purge_ms):.2f}x "
            f"the time; at start RssAnon grows by {per_object:.0f} bytes per stored object "
            f"(RssFile, the mapped index, by {per_file:.0f})."
        )
    lines += ["", *cpu_table(results)]
    if args.nginx:
        lines += ["", *nginx_table(results)]
    return "\n".join(lines)


def cpu_table(results: Sequence[Result]) -> list[str]:
    """The edge's CPU per hit (medians of the runs): how much of a hit's time is the
    edge's own code (user) and how much the kernel's on its behalf (system)."""
    lines = [
        "| objects stored | hot: user µs per hit | hot: system | uniform: user | uniform: system |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        cells = [
            statistics.median(sample[part] for sample in samples)
            for samples in (r.hot_cpu, r.uniform_cpu)
            for part in (0, 1)
        ]
        lines.append(f"| {r.count:,} | " + " | ".join(f"{cell:.1f}" for cell in cells) + " |")
    return lines


def nginx_table(results: Sequence[Result]) -> list[str]:
    """Edge and nginx hits by store size, measured in the same rounds, and how flat
    each is (largest store against smallest)."""
    lines = [
        "| objects stored | nginx fill (objects/s) | edge hot hits/s | nginx hot hits/s "
        "| edge uniform hits/s | nginx uniform hits/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.count:,} | {r.count / r.nginx_fill_s:,.0f} | {statistics.median(r.hot):,.0f} "
            f"| {statistics.median(r.nginx_hot):,.0f} | {statistics.median(r.uniform):,.0f} "
            f"| {statistics.median(r.nginx_uniform):,.0f} |"
        )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        lines += [
            "",
            f"Largest against smallest store: edge hot {_ratio(large.hot, small.hot)}, "
            f"uniform {_ratio(large.uniform, small.uniform)}; nginx hot "
            f"{_ratio(large.nginx_hot, small.nginx_hot)}, uniform "
            f"{_ratio(large.nginx_uniform, small.nginx_uniform)}. Per round (largest/smallest, "
            f"uniform): edge {_per_round(large.uniform, small.uniform)}, nginx "
            f"{_per_round(large.nginx_uniform, small.nginx_uniform)}.",
        ]
    return lines


def _per_round(large: list[float], small: list[float]) -> str:
    return ", ".join(f"{a / b:.2f}" for a, b in zip(large, small, strict=True))


def _ratio(large: list[float], small: list[float]) -> str:
    return f"{statistics.median(large) / statistics.median(small):.2f}x"


def hold(edges: Sequence[tuple[Result, Edge, Path]]) -> None:
    """Print each filled edge's port, process ids and store directory and wait for
    Ctrl-C (or SIGTERM), so that a profiler can be attached to an edge under a load
    of one's own (or `bench/lane_cost.py` opened on its store)."""
    for result, edge, _tmp in edges:
        pids = " ".join(str(pid) for pid in edge.pids())
        print(f"{result.count:,}: port {edge.port} pids {pids} store {edge.cache_dir}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table, and write it with `--write`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,1000000", help="store sizes, comma-separated")
    parser.add_argument("--size", choices=sorted(SIZES), default="1k")
    parser.add_argument("--cache-size", default="64GiB", help="the edge's cache_size")
    parser.add_argument("--memory-size", help="the edge's memory_size (default: its default)")
    parser.add_argument(
        "--scrub-rate", help='the edge\'s scrub_rate ("0": no scrubbing; default: its default)'
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--purges", type=int, default=30)
    parser.add_argument(
        "--nginx",
        action="store_true",
        help="also fill nginx proxy_cache (2 workers) with the same URLs and measure its hits",
    )
    parser.add_argument("--write", metavar="FILE", help="also write the results as Markdown")
    parser.add_argument(
        "--hold",
        action="store_true",
        help="fill and start the edges, print their ports and pids, and wait for Ctrl-C",
    )
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]

    signal.signal(signal.SIGTERM, hits._exit_on_signal)
    hits.ensure_tools([])
    procs = hits.Processes()
    started = datetime.datetime.now(datetime.UTC)
    results = measure_all(args, counts, procs)
    if args.hold:
        return 0
    body = table(results, args)
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "bench/store_scale.py", *sys.argv[1:]]
    )
    print(body)
    if args.write:
        Path(args.write).write_text(
            f"# Store scale\n\nMeasured {started:%Y-%m-%d %H:%M} UTC on {hits.versions()}.\n\n"
            f"```\n{command}\n```\n\n{body}\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
