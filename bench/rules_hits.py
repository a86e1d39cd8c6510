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


def gate_cost_us(rules: str, rounds: int = 5, n: int = 50_000) -> float:
    """Microseconds the engine's rule gate adds to one hit request, in process (the
    best of `rounds`, so other load on the machine counts as little as it can)."""
    import asyncio
    import timeit

    from multidict import CIMultiDict

    from edge.cache.purge import PurgeRules
    from edge.front.types import RequestHead
    from edge.options import EngineOptions
    from edge.store import MemoryStore
    from edge.traffic import TrafficGate
    from fleet.config import parse_fleet

    text = f'[[services]]\nname = "b"\nhosts = ["{HOST}"]\norigins = ["http://h:1"]\n{rules}'
    services = parse_fleet(text).services
    gate = TrafficGate(
        services, EngineOptions("b"), MemoryStore(1 << 20), PurgeRules(services), time_now
    )
    headers = CIMultiDict({"Host": HOST, "User-Agent": "wrk", "Accept": "*/*"})
    request = RequestHead("GET", PATH, headers, "127.0.0.1")

    async def many() -> None:
        for _ in range(n):
            await gate.gate(request, None)  # type: ignore[arg-type]

    return min(timeit.repeat(lambda: asyncio.run(many()), number=1, repeat=rounds)) / n * 1e6


def time_now() -> float:
    """The clock the gate is given (rate limits only; none here)."""
    return 0.0


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
    cost = gate_cost_us(fifty_rules())
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
            f"In process, the rule gate costs {cost:.2f} µs per hit request (best of 5 x "
            f"50,000), {100 * cost / per_hit:.1f}% of the {per_hit:.0f} µs one hit takes at "
            "the no-rules edge's median rate.",
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
