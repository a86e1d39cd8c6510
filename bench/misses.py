"""Cold-miss throughput of the edge against nginx proxy_cache: every request a new URL.

Not a test: it prints a Markdown table (and with `--write FILE` also records it with
the command and the date). Run from the repository root:

    .venv/bin/python bench/misses.py [--rounds 3] [--duration 10] [--workers 2]
                                     [--cases id-1k,id-100k] [--access-log off]
                                     [--write FILE]
    .venv/bin/python bench/misses.py --workers 1 --hold     # then, with its ports:
    .venv/bin/python bench/misses.py --cpu PORT:PID [--cpu PORT:PID ...]

It reuses `bench/hits.py`'s processes (demo origin, the edge as a real process, nginx
proxy_cache with `proxy_cache_lock on`) and drives each with `wrk -t2 -c32` and a Lua
script that asks for `PATH?u=<run>-<thread>-<n>`: a URL no server has seen, so every
request is a miss that fetches from the origin, stores the body and answers. The demo
origin ignores the query; both caches key on it. Rounds interleave edge and nginx,
and the table gives medians and the ratio of the medians. Both write their access
logs as they ship (the edge's default `access_log = "stdout"`, nginx's default
combined log to a file) unless `--access-log off` turns both off.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import secrets
import shlex
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hits  # a sibling script, not a package

#: wrk's Lua: every thread numbers its own requests, under a per-run prefix
LUA = """
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function request()
  counter = counter + 1
  return wrk.format(nil, path .. "?u=" .. prefix .. "-" .. tid .. "-" .. counter)
end
"""


def start_static_origin(servers: hits.Servers) -> None:
    """A fast origin: nginx serving `/bin/1k`, `/bin/100k`, `/bin/1m` as static files
    with `Cache-Control: public, max-age=3600`, so the origin is not what limits; and
    `/json/1k`, a compressible object (`application/json`)."""
    servers.origin_port = hits.free_port()
    prefix = servers.tmp / "origin-nginx"
    for sub in ("root/bin", "root/json", "temp", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    for name, size in (("1k", 1024), ("100k", 100 * 1024), ("1m", 1024 * 1024)):
        (prefix / "root" / "bin" / name).write_bytes(os.urandom(size))
    document = json.dumps({"items": [{"id": n, "name": f"item {n}"} for n in range(33)]})
    (prefix / "root" / "json" / "1k").write_text(document.ljust(1024))  # 1 KiB, valid JSON
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{hits.nginx_head(prefix, 1)}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{servers.origin_port};
        root {prefix}/root;
        add_header Cache-Control "public, max-age=3600";
        location /json/ {{
            default_type application/json;
        }}
    }}
}}
""",
        encoding="utf-8",
    )
    nginx = hits._which("nginx") or "nginx"
    argv = [nginx, "-p", str(prefix), "-e", str(prefix / "logs" / "error.log")]
    log = servers.tmp / "origin-nginx.log"
    child = servers.procs.start([*argv, "-c", str(conf), "-g", "daemon off;"], log)
    hits.wait_listening(servers.origin_port, child, log, 20)


def run_wrk_misses(port: int, path: str, duration: float, script: Path) -> hits.WrkResult:
    """`wrk -t2 -c32` with every request a new URL under `path`."""
    prefix = secrets.token_hex(4)
    env_script = script.with_name(f"misses-{prefix}.lua")
    env_script.write_text(f'path = "{path}"\nprefix = "{prefix}"\n{LUA}', encoding="utf-8")
    argv = ["wrk", "-t2", "-c32", f"-d{duration:g}s", "--latency", "-H", f"Host: {hits.HOST}"]
    result = hits.run_quiet([*argv, "-s", str(env_script), f"http://127.0.0.1:{port}/"])
    out = result.stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if result.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed:\n{out}\n{result.stderr}")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))

    def percentile(p: str) -> float:
        found = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(found.group(1)) * hits._UNIT_MS[found.group(2)] if found else float("nan")

    return hits.WrkResult(float(match.group(1)), percentile("50"), percentile("99"), errors)


def bench_misses(
    servers: hits.Servers, cases: Sequence[hits.Case], rounds: int, duration: float
) -> dict[tuple[str, str], list[hits.WrkResult]]:
    """Interleaved rounds of misses against the edge and nginx, per case."""
    results: dict[tuple[str, str], list[hits.WrkResult]] = {}
    script = servers.tmp / "misses.lua"
    for n in range(rounds):
        for case in cases:
            for server, port in (("edge", servers.edge_port), ("nginx", servers.nginx_port)):
                result = run_wrk_misses(port, case.path, duration, script)
                results.setdefault((case.name, server), []).append(result)
                print(
                    f"round {n + 1} {case.name} {server}: {result.rps:,.0f} misses/s "
                    f"(errors {result.errors})",
                    file=sys.stderr,
                )
    return results


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) the process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) of the process's main thread, the one that runs
    its event loop (TID = PID): what the store's threads spend is left out."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_miss(targets: Sequence[str], rounds: int, duration: float, path: str) -> str:
    """µs of CPU per miss of held edges (`PORT:PID` each, from `--hold` runs), measured
    in turn, `rounds` times: the process's utime + stime over the misses answered, and
    its event loop thread's alone.
    The steady measure on a shared machine, where misses/s follows the load."""
    lines = [
        "| edge | µs of CPU per miss | median | loop thread µs per miss | median | misses/s |",
        "|---|---|---|---|---|---|",
    ]
    figures: dict[str, list[tuple[float, float, float]]] = {t: [] for t in targets}
    with tempfile.TemporaryDirectory(prefix="edgeshield-cpu-") as tmp:
        script = Path(tmp) / "misses.lua"
        for n in range(rounds):
            # the order reversed every other round: no edge always runs first
            for target in targets if n % 2 == 0 else targets[::-1]:
                port, pid = (int(part) for part in target.split(":"))
                before, loop_before = process_cpu(pid), loop_cpu(pid)
                result = run_wrk_misses(port, path, duration, script)
                used, loop_used = process_cpu(pid) - before, loop_cpu(pid) - loop_before
                misses = result.rps * duration
                figures[target].append((used / misses * 1e6, loop_used / misses * 1e6, result.rps))
                print(
                    f"round {n + 1} {target}: {used / misses * 1e6:.0f} µs/miss "
                    f"(loop {loop_used / misses * 1e6:.0f}), {result.rps:,.0f} misses/s",
                    file=sys.stderr,
                )
    for target, runs in figures.items():
        cpu = ", ".join(f"{us:.0f}" for us, _, _ in runs)
        loop = ", ".join(f"{us:.0f}" for _, us, _ in runs)
        rps = ", ".join(f"{r:,.0f}" for _, _, r in runs)
        lines.append(
            f"| {target} | {cpu} | {statistics.median(us for us, _, _ in runs):.0f} | {loop} "
            f"| {statistics.median(us for _, us, _ in runs):.0f} | {rps} |"
        )
    return "\n".join(lines)


def misses_table(
    servers: hits.Servers,
    cases: Sequence[hits.Case],
    results: dict[tuple[str, str], list[hits.WrkResult]],
) -> str:
    """The Markdown table: medians, ratio, per-round ratio range, errors."""
    lines = [
        "| case | edge misses/s | nginx misses/s | edge/nginx | per-round ratios | "
        "edge p99 ms | nginx p99 ms | errors (edge/nginx) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        edge, nginx = results[(case.name, "edge")], results[(case.name, "nginx")]
        e_rps = statistics.median(r.rps for r in edge)
        n_rps = statistics.median(r.rps for r in nginx)
        ratios = [a.rps / b.rps for a, b in zip(edge, nginx, strict=True) if b.rps]
        lines.append(
            f"| {case.label} | {e_rps:,.0f} | {n_rps:,.0f} | {e_rps / n_rps:.2f}x | "
            f"{min(ratios):.2f}-{max(ratios):.2f} | "
            f"{statistics.median(r.p99_ms for r in edge):.1f} | "
            f"{statistics.median(r.p99_ms for r in nginx):.1f} | "
            f"{sum(r.errors for r in edge)}/{sum(r.errors for r in nginx)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table, and write it with `--write`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--nginx-workers", type=int, default=2)
    parser.add_argument("--cases", default="id-1k,id-100k", help=f"of {sorted(hits.CASES)}")
    parser.add_argument(
        "--origin",
        choices=("static", "demo"),
        default="static",
        help="static: nginx serving files (fast); demo: the Python demo origin",
    )
    parser.add_argument(
        "--access-log",
        choices=("default", "off"),
        default="default",
        help="default: each logs as it ships (the edge a JSON line to stdout, nginx the "
        "combined format to a file); off: neither logs",
    )
    parser.add_argument(
        "--hold", action="store_true", help="start the servers, print their ports, wait"
    )
    parser.add_argument("--write", metavar="FILE", help="also write the results as Markdown")
    parser.add_argument(
        "--cpu",
        metavar="PORT:PID",
        action="append",
        help="measure µs of CPU per 1 KiB miss of held edges (repeat for several), in turn",
    )
    args = parser.parse_args(argv)
    if args.cpu:
        print(cpu_per_miss(args.cpu, args.rounds, args.duration, "/bin/1k"))
        return 0
    cases = [hits.CASES[name] for name in args.cases.split(",")]

    signal.signal(signal.SIGTERM, hits._exit_on_signal)
    notes: list[str] = []
    brotli = hits.ensure_tools(notes)
    procs = hits.Processes()
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="edgeshield-bench-") as tmp:
        servers = hits.Servers(Path(tmp), procs, notes)
        servers.access_log = servers.nginx_access_log = args.access_log == "default"
        try:
            if args.origin == "static":
                start_static_origin(servers)
            else:
                servers.start_origin()
            servers.start_edge(args.workers)
            servers.start_nginx(args.nginx_workers, brotli)
            if args.hold:
                print(
                    f"origin {servers.origin_port} edge {servers.edge_port} "
                    f"nginx {servers.nginx_port} edge pids {servers.edge_pids()}",
                    flush=True,
                )
                signal.pause()
            results = bench_misses(servers, cases, args.rounds, args.duration)
            body = misses_table(servers, cases, results)
        finally:
            procs.stop_all()
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "bench/misses.py", *sys.argv[1:]]
    )
    notes.insert(
        0,
        f"Edge: `workers = {servers.edge_workers}`; nginx: `worker_processes "
        f"{args.nginx_workers}`, proxy_cache, `proxy_cache_lock on`; origin: {args.origin}; "
        + (
            "access logs as each ships (the edge's JSON lines to stdout, nginx's combined "
            "format to a file)."
            if args.access_log == "default"
            else "no access log on either."
        ),
    )
    print(body)
    for note in notes:
        print(f"- {note}")
    if args.write:
        Path(args.write).write_text(
            f"# Cold misses: edge against nginx proxy_cache\n\nMeasured {started:%Y-%m-%d %H:%M}"
            f" UTC on {hits.versions()}.\n\n```\n{command}\n```\n\n{body}\n\n"
            + "\n".join(f"- {n}" for n in notes)
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
