"""What 50 traffic rules cost on the hit path: two edges, one without rules, one with.

Not a test: it prints a Markdown table (with `--write FILE` it also appends it, with
the command and the date). Run from the repository root:

    .venv/bin/python bench/rules_hits.py [--rounds 5] [--duration 5] [--write FILE]

Both edges run as real processes (`python -m cli.main edge`, one worker each, no
shields) in front of the demo origin, serve the same hot object (`/json/1k`, a hit
from the memory tier) and are measured by `wrk -t1 -c32` in turn, interleaved, for
several rounds; the table gives the medians and the ratio of the two taken in the
same run. The 50 rules are a mix such as a site grows: 25 response rules (TTL and
headers per section), 20 redirects of old sections, 4 method-restricted responds and
one bypass keyed on a header, so a hit evaluates every request-dependent rule that
may apply to its path.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from hits import (  # noqa: E402
    HOST,
    Processes,
    free_port,
    http_get,
    run_quiet,
    wait_listening,
)

PATH = "/json/1k"


def fifty_rules() -> str:
    """The 50 rules of the benchmark (see the module's docstring)."""
    rules = []
    for i in range(25):
        rules.append(
            f'[[services.rules]]\nmatch = {{ path_prefix = "/section{i}/" }}\n'
            f'ttl = "{i + 1}m"\nset_response_headers = {{ "X-Section" = "{i}" }}\n'
        )
    for i in range(20):
        rules.append(
            f'[[services.rules]]\nmatch = {{ path_prefix = "/old{i}/" }}\n'
            f'redirect = {{ to = "https://{HOST}/new{i}$path" }}\n'
        )
    for i in range(4):
        rules.append(
            f'[[services.rules]]\nmatch = {{ path_prefix = "/private{i}", methods = ["POST"] }}\n'
            "respond = { status = 403 }\n"
        )
    rules.append(
        '[[services.rules]]\nmatch = { header = { name = "X-Debug", value_regex = "^1$" } }\n'
        "bypass_cache = true\n"
    )
    return "\n".join(rules)


def start_edge(procs: Processes, tmp: Path, origin_port: int, name: str, rules: str) -> int:
    """An edge with `rules` in its service; returns its traffic port once it serves."""
    port, admin = free_port(), free_port()
    fleet = tmp / f"{name}.toml"
    fleet.write_text(
        f"""[[regions]]
name = "local"
latitude = 0.0
longitude = 0.0

[[services]]
name = "bench"
hosts = ["{HOST}"]
origins = ["http://127.0.0.1:{origin_port}"]
{rules}

[[edges]]
name = "{name}"
region = "local"
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
cache_dir = "{tmp / name}"
cache_size = "1GiB"
""",
        encoding="utf-8",
    )
    log = tmp / f"{name}.log"
    env = {"EDGESHIELD_NODE_SECRET": "bench-secret", "EDGESHIELD_ACCESS_LOG": "0"}
    argv = [sys.executable, "-m", "cli.main", "edge", "--config", str(fleet), "--node", name]
    child = procs.start(argv, log, env)
    wait_listening(port, child, log, 30)
    for _ in range(5):
        http_get(port, PATH)
    reply = http_get(port, PATH)
    if reply.status != 200 or "hit" not in reply.headers.get("cache-status", ""):
        raise RuntimeError(f"{name} does not hit: {reply}")
    return port


def wrk(port: int, duration: float) -> float:
    """Requests per second of `wrk -t1 -c32` on the hot object."""
    argv = ["wrk", "-t1", "-c32", f"-d{duration:g}s", "-H", f"Host: {HOST}"]
    out = run_quiet([*argv, f"http://127.0.0.1:{port}{PATH}"]).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"wrk failed:\n{out}")


def engine_hit_us(rules: str, rounds: int = 15, n: int = 10_000) -> tuple[float, float]:
    """Microseconds of `Engine.handle` per hot hit, in process, with no rules and with
    `rules`: the two engines measured in turn, each the best of `rounds` runs of `n`
    hits (so load from elsewhere on the machine counts as little as it can). This is
    the engine alone, without a front's parsing and writing, so the share the rules
    take of it is larger than their share of a hit through a socket."""
    import asyncio

    from multidict import CIMultiDict, CIMultiDictProxy

    from edge.engine import Engine
    from edge.front.types import RequestHead
    from fleet.config import parse_fleet
    from tests.support.engine_harness import HOST as CACHE_HOST
    from tests.support.engine_harness import running_cache

    text = f'[[services]]\nname = "b"\nhosts = ["h"]\norigins = ["http://h:1"]\n{rules}'
    traffic = parse_fleet(text).services[0].traffic
    fields = {"Host": CACHE_HOST, "User-Agent": "wrk", "Accept": "*/*"}
    request = RequestHead("GET", PATH, CIMultiDictProxy(CIMultiDict(fields)), "127.0.0.1")

    class NoBody:
        exists = False
        length = None

        async def chunks(self) -> object:  # pragma: no cover - never read
            raise AssertionError

    class Discard:
        def send(self, status: int, headers: object, body: object = None, **_: object) -> None:
            assert status == 200

    async def timed(engine: Engine) -> float:
        loop = asyncio.get_running_loop()
        body, sink = NoBody(), Discard()
        start = loop.time()
        for _ in range(n):
            await engine.handle(request, body, sink)  # type: ignore[arg-type]
        return (loop.time() - start) / n * 1e6

    async def run() -> tuple[float, float]:
        best = {"plain": float("inf"), "ruled": float("inf")}
        async with running_cache() as plain, running_cache(traffic=traffic) as ruled:
            for cache in (plain, ruled):
                cache.origin.responds(PATH, cache_control="max-age=86400", body=b"x" * 1024)
                await cache.get(PATH)
                await cache.get(PATH)
            for _ in range(rounds):
                best["plain"] = min(best["plain"], await timed(plain.engine))
                best["ruled"] = min(best["ruled"], await timed(ruled.engine))
        return best["plain"], best["ruled"]

    return asyncio.run(run())


def main() -> int:
    """Run the benchmark and print (and optionally record) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="rules-bench-") as tmp_name:
        tmp = Path(tmp_name)
        origin_port = free_port()
        origin_log = tmp / "origin.log"
        origin = procs.start(
            [
                sys.executable,
                "-m",
                "demo.origin",
                "--quiet",
                "--listen",
                f"127.0.0.1:{origin_port}",
            ],
            origin_log,
        )
        wait_listening(origin_port, origin, origin_log, 20)
        plain = start_edge(procs, tmp, origin_port, "plain", "")
        ruled = start_edge(procs, tmp, origin_port, "ruled", fifty_rules())
        results: dict[str, list[float]] = {"plain": [], "ruled": []}
        for _ in range(args.rounds):
            for name, port in (("plain", plain), ("ruled", ruled)):
                results[name].append(wrk(port, args.duration))
        procs.stop_all()
    plain_us, ruled_us = engine_hit_us(fifty_rules())
    per_hit = 1e6 / statistics.median(results["plain"])
    ratios = [r / p for r, p in zip(results["ruled"], results["plain"], strict=True)]
    table = "\n".join(
        [
            "| edge | hit req/s (median) | rounds |",
            "|---|---|---|",
            f"| no rules | {statistics.median(results['plain']):.0f} | "
            + ", ".join(f"{x:.0f}" for x in results["plain"])
            + " |",
            f"| 50 rules | {statistics.median(results['ruled']):.0f} | "
            + ", ".join(f"{x:.0f}" for x in results["ruled"])
            + " |",
            "",
            f"50 rules / no rules, median of per-round ratios: {statistics.median(ratios):.3f} "
            f"(per round: {', '.join(f'{x:.3f}' for x in ratios)})",
            "",
            f"In process (`Engine.handle` on a hot hit, best of 15 x 10,000): "
            f"{plain_us:.2f} µs without rules, {ruled_us:.2f} µs with 50; the rules add "
            f"{ruled_us - plain_us:.2f} µs, {100 * (ruled_us - plain_us) / plain_us:.1f}% of "
            f"the engine's time and {100 * (ruled_us - plain_us) / per_hit:.1f}% of the "
            f"{per_hit:.0f} µs a hit takes through a socket at the no-rules edge's median.",
        ]
    )
    print(table)
    if args.write:
        command = shlex.join(["bench/rules_hits.py", *sys.argv[1:]])
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        with args.write.open("a", encoding="utf-8") as out:
            out.write(f"\n### Traffic rules on the hit path ({date})\n\n`{command}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
