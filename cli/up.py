"""`edgeshield up`: every node of a fleet on this machine, each its own process.

The fleet comes from a fleet file, or (with none) is the built-in demo fleet in front
of the demo origin. Nodes start in dependency order (origin, purge API, shields,
edges, GeoDNS), each stage only once the one before is healthy, so an edge finds its
shields and the purge log when it starts. Each child's output is printed with its
node name in front; a child that dies is restarted with backoff; SIGINT or SIGTERM
stops every child (SIGTERM to its process group, SIGKILL after a grace period) and
nothing is left running.

Lines that scripts may rely on (everything `up` itself says starts "edgeshield: "):
  edgeshield: fleet file PATH
  edgeshield: started NODE pid PID        (every start, restarts included)
  edgeshield: ready                       (then the table of nodes and commands)
  edgeshield: shell variables in PATH     (with a state directory: `. PATH` to use them)
  edgeshield: stopped                     (the last line, after every child is gone)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cli.banner import format_table, try_commands
from cli.demo import DemoInfo, demo_fleet_toml
from cli.nats import NatsServerMissing, nats_specs
from cli.plan import cli_argv, plan_fleet
from cli.supervisor import Supervisor
from fleet.config import Fleet, load_fleet, node_secret

__all__ = ["run_up"]


def _print(line: str) -> None:
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run_up(config: str | None, state_dir: str | None, *, keep_state: bool = False) -> int:
    """Run a fleet (or the demo) until SIGINT/SIGTERM; 0 after a clean stop.

    With a fleet file, the directories the fleet's processes create (caches, the purge
    log, the .mmdb's directory) and that did not exist before are removed when it
    stops, unless `keep_state`."""
    created: list[Path] = []
    if config is not None and not keep_state:
        created = _missing_dirs(load_fleet(config))
    try:
        return asyncio.run(_up(config, state_dir))
    finally:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)


def _missing_dirs(fleet: Fleet) -> list[Path]:
    """The fleet's state directories that do not exist yet, topmost first: `state/`
    rather than `state/edge1` when `state/` is new too."""
    wanted = [Path(node.cache_dir) for node in fleet.nodes]
    if fleet.purge_api is not None:
        wanted.append(Path(fleet.purge_api.data_dir))
    if fleet.geo is not None and fleet.geo.mmdb:
        wanted.append(Path(fleet.geo.mmdb).parent)
    found: list[Path] = []
    for path in wanted:
        path = path.resolve()
        top = None
        for parent in [path, *path.parents]:
            if parent.exists():
                break
            top = parent
        if top is not None and top not in found:
            found.append(top)
    return found


async def _up(config: str | None, state_dir: str | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    temporary = config is None and state_dir is None
    state: Path | None = None
    if state_dir is not None:
        state = Path(state_dir).resolve()
        state.mkdir(parents=True, exist_ok=True)
    elif temporary:
        state = Path(tempfile.mkdtemp(prefix="edgeshield-demo-"))
    try:
        return await _run(config, state, stop)
    finally:
        if temporary and state is not None:
            shutil.rmtree(state, ignore_errors=True)


async def _run(config: str | None, state: Path | None, stop: asyncio.Event) -> int:
    demo: DemoInfo | None = None
    if config is None:
        assert state is not None
        text, demo = demo_fleet_toml(state)
        config_path = state / "fleet.toml"
        config_path.write_text(text, encoding="utf-8")
    else:
        config_path = Path(config).resolve()
    fleet = load_fleet(config_path)
    _print(f"edgeshield: fleet file {config_path}")
    if state is not None:
        _print(f"edgeshield: state in {state}")

    secret_env = fleet.security.node_secret_env
    secret = node_secret(fleet) or secrets.token_urlsafe(32)
    env = {**os.environ, secret_env: secret, "PYTHONUNBUFFERED": "1"}

    if not await _build_mmdb(fleet, str(config_path), env):
        return 1
    try:
        # local nats-servers first (stage 0) when the purge log is JetStream here
        specs = [*nats_specs(fleet), *plan_fleet(fleet, str(config_path), secret, demo)]
    except NatsServerMissing as exc:
        _print(f"edgeshield: {exc}")
        return 1
    supervisor = Supervisor(specs, env, state / "logs" if state else None, _print)
    starting = asyncio.create_task(supervisor.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set() and not starting.result():
        _print("edgeshield: the fleet did not start; stopping")
        await supervisor.stop()
        stopped.cancel()
        _print("edgeshield: stopped")
        return 1
    if not stop.is_set():
        pids = {n.spec.name: n.proc.pid for n in supervisor.nodes if n.proc is not None}
        _print("edgeshield: ready")
        for line in format_table(specs, pids):
            _print(line)
        if demo is not None:
            _print(f"demo purge token: {demo.token}")
            _print(f"demo host: {demo.host} (send it as the Host header to any edge)")
            _print(f"node secret: {secret} (admin /metrics, /healthz, /v1/cache: Bearer)")
        if state is not None:
            env_file = _write_env(state, fleet, config_path, secret, demo)
            _print(f"edgeshield: shell variables in {env_file}")
        _print("try:")
        for line in try_commands(fleet, specs, demo, secret if demo else None):
            _print(f"  {line}")
        _print("Ctrl-C stops the fleet.")
        await stopped
    _print("edgeshield: stopping")
    starting.cancel()
    await supervisor.stop()
    _print("edgeshield: stopped")
    return 0


def _write_env(
    state: Path, fleet: Fleet, config_path: Path, secret: str, demo: DemoInfo | None
) -> Path:
    """`STATE/env.sh`: the fleet's addresses (and the demo's token and the node
    secret) as shell variables, so documented commands run as written after
    `. STATE/env.sh`. Readable by its owner only: it holds secrets."""
    values = {"FLEET": str(config_path), fleet.security.node_secret_env: secret}
    if fleet.edges:
        values |= {"EDGE": fleet.edges[0].url, "EDGE_ADMIN": fleet.edges[0].admin_url}
    if fleet.shields:
        values["SHIELD_ADMIN"] = fleet.shields[0].admin_url
    if fleet.services:
        values |= {"SERVICE": fleet.services[0].name, "CDN_HOST": fleet.services[0].hosts[0]}
    if fleet.purge_api is not None:
        values["API"] = fleet.purge_api.url
    if fleet.geo is not None:
        values["GEO_DNS_PORT"] = fleet.geo.dns_listen.rpartition(":")[2]
        values["GEO_HTTP"] = f"http://{fleet.geo.http_listen}"
        values["ZONE"] = fleet.geo.zone
    if demo is not None:
        values |= {"EDGESHIELD_TOKEN": demo.token, "ORIGIN": demo.origin_url}
    path = state / "env.sh"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(
        "# written by `edgeshield up`: the running fleet's addresses; `. THIS_FILE`\n"
        + "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items()),
        encoding="utf-8",
    )
    return path


async def _build_mmdb(fleet: Fleet, config_path: str, env: Mapping[str, str]) -> bool:
    """Write the geo .mmdb named in the fleet file when it does not exist yet.

    A simulated fleet (the demo) has no real GeoIP database; `geo build-mmdb` places
    each region's client networks at its coordinates. A real database is left alone.
    """
    if fleet.geo is None or not fleet.geo.mmdb or Path(fleet.geo.mmdb).exists():
        return True
    Path(fleet.geo.mmdb).parent.mkdir(parents=True, exist_ok=True)
    _print(f"edgeshield: building {fleet.geo.mmdb} from the fleet's client networks")
    proc = await asyncio.create_subprocess_exec(
        *cli_argv("geo", "build-mmdb", "--config", config_path, "-o", fleet.geo.mmdb),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
    )
    output, _ = await proc.communicate()
    for line in output.decode(errors="replace").splitlines():
        _print(f"geo | {line}")
    if proc.returncode != 0:
        _print(f"edgeshield: geo build-mmdb failed with status {proc.returncode}")
        return False
    return True
