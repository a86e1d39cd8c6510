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
  edgeshield: stopped                     (the last line, after every child is gone)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from cli.demo import DemoInfo, demo_fleet_toml
from fleet.config import Fleet, load_fleet, node_secret, split_host_port
from runtime.process import die_with_parent_hook

__all__ = ["HealthCheck", "NodeSpec", "Supervisor", "plan_fleet", "run_up"]

STARTUP_TIMEOUT = 60.0  # seconds for one node to become healthy
STARTUP_ATTEMPTS = 3  # exits before first health after which `up` gives up
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0  # a child that ran this long restarts with the first backoff again
LINE_LIMIT = 1024 * 1024

Write = Callable[[str], None]


@dataclass(frozen=True)
class HealthCheck:
    """How to tell a node is up: it accepts TCP, and (if given) answers 200 over HTTP."""

    tcp: tuple[str, int]
    http_url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeSpec:
    """One process of the fleet: what to run, how to check it, and what to show."""

    name: str
    role: str
    region: str
    argv: tuple[str, ...]
    health: HealthCheck
    stage: int
    addresses: tuple[str, ...] = ()


def _cli(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "cli.main", *args)


def plan_fleet(
    fleet: Fleet, config_path: str, node_secret: str, demo: DemoInfo | None = None
) -> list[NodeSpec]:
    """The processes that make up `fleet`, in start order (origin first, geo last)."""
    admin = {"Authorization": f"Bearer {node_secret}"}
    specs: list[NodeSpec] = []
    if demo is not None:
        host, port = split_host_port(demo.origin_listen)
        specs.append(
            NodeSpec(
                name="origin",
                role="origin",
                region="-",
                argv=(sys.executable, "-m", "demo.origin", "--listen", demo.origin_listen),
                health=HealthCheck((host, port), f"{demo.origin_url}/healthz"),
                stage=0,
                addresses=(demo.origin_url,),
            )
        )
    if fleet.purge_api is not None:
        api = fleet.purge_api
        specs.append(
            NodeSpec(
                name="purge-api",
                role="purge-api",
                region="-",
                argv=_cli("purge-api", "--config", config_path),
                health=HealthCheck(split_host_port(api.listen), f"{api.url}/healthz"),
                stage=1,
                addresses=(api.url,),
            )
        )
    for stage, role, nodes in ((2, "shield", fleet.shields), (3, "edge", fleet.edges)):
        for node in nodes:
            specs.append(
                NodeSpec(
                    name=node.name,
                    role=role,
                    region=node.region,
                    argv=_cli(role, "--config", config_path, "--node", node.name),
                    health=HealthCheck(
                        split_host_port(node.listen), f"{node.admin_url}/healthz", admin
                    ),
                    stage=stage,
                    addresses=(node.url, f"admin {node.admin_url}"),
                )
            )
    if fleet.geo is not None:
        geo = fleet.geo
        dns_host, dns_port = split_host_port(geo.dns_listen)
        http_host, http_port = split_host_port(geo.http_listen)
        route_url = f"http://{_url_host(http_host)}:{http_port}"
        specs.append(
            NodeSpec(
                name="geo",
                role="geo",
                region="-",
                argv=_cli("geo", "serve", "--config", config_path),
                # GeoDNS serves its port over TCP as well as UDP, so a TCP accept says
                # DNS is up; the route endpoint answering shows the process is geo.
                health=HealthCheck((dns_host, dns_port), f"{route_url}/v1/route?ip=127.0.0.1"),
                stage=4,
                addresses=(f"dns {geo.dns_listen} (udp+tcp)", route_url),
            )
        )
    return specs


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class _Node:
    spec: NodeSpec
    proc: asyncio.subprocess.Process | None = None
    healthy: bool = False
    ever_healthy: bool = False
    gave_up: str = ""
    starts: int = 0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs node processes: starts them in stages, watches, restarts, and stops them."""

    def __init__(
        self, specs: Sequence[NodeSpec], env: Mapping[str, str], log_dir: Path | None, write: Write
    ) -> None:
        self.nodes = [_Node(spec) for spec in specs]
        self.env = dict(env)
        self.log_dir = log_dir
        self.write = write
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._helpers: set[asyncio.Task[None]] = set()
        self._width = max((len(spec.name) for spec in specs), default=4)
        self._preexec = die_with_parent_hook()

    def node(self, name: str) -> _Node:
        """The running record of node `name`."""
        return next(n for n in self.nodes if n.spec.name == name)

    @property
    def all_pids(self) -> list[int]:
        """Every PID any child ever had, restarts included."""
        return [pid for node in self.nodes for pid in node.pids]

    async def start(self, timeout: float = STARTUP_TIMEOUT) -> bool:
        """Start stage after stage; True once every node is healthy, False on failure."""
        for stage in sorted({node.spec.stage for node in self.nodes}):
            group = [node for node in self.nodes if node.spec.stage == stage]
            for node in group:
                self._tasks.append(asyncio.create_task(self._keep_running(node)))
            results = await asyncio.gather(*(self._wait_healthy(n, timeout) for n in group))
            if not all(results):
                return False
        return True

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every child's process group, SIGKILL what is left after `grace`."""
        self.stopping.set()
        running = [node.proc for node in self.nodes if node.proc is not None]
        for proc in running:
            _signal_group(proc.pid, signal.SIGTERM)
        if running:
            waits = [asyncio.create_task(proc.wait()) for proc in running]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for proc in running:
                if proc.returncode is None:
                    self.say(f"{self._name_of(proc)} did not stop in {grace:g}s; killing it")
                # Whatever the leader did, take its whole group (worker processes) with it.
                _signal_group(proc.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Let the relays print what the children said last, then drop what remains.
        if self._helpers:
            await asyncio.wait(self._helpers, timeout=2.0)
        for task in self._helpers:
            task.cancel()

    def _name_of(self, proc: asyncio.subprocess.Process) -> str:
        return next((n.spec.name for n in self.nodes if n.proc is proc), "?")

    def say(self, message: str) -> None:
        """A line from `up` itself."""
        self.write(f"edgeshield: {message}")

    async def _keep_running(self, node: _Node) -> None:
        backoff = BACKOFF_FIRST
        while not self.stopping.is_set():
            try:
                proc = await self._spawn(node)
            except OSError as exc:
                node.gave_up = f"cannot start: {exc}"
                self.say(f"{node.spec.name} {node.gave_up}")
                return
            began = time.monotonic()
            if node.starts > 1:
                self._helper(self._announce_recovery(node, proc))
            code = await proc.wait()
            node.healthy = False
            # A worker left behind by a dead leader would hold the port.
            _signal_group(proc.pid, signal.SIGKILL)
            if self.stopping.is_set():
                return
            if time.monotonic() - began > STABLE_AFTER:
                backoff = BACKOFF_FIRST
            if not node.ever_healthy and node.starts >= STARTUP_ATTEMPTS:
                node.gave_up = f"exited with status {code} {node.starts} times while starting"
                return
            self.say(f"{node.spec.name} exited with status {code}; restarting in {backoff:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _spawn(self, node: _Node) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *node.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            start_new_session=True,
            preexec_fn=self._preexec,
            limit=LINE_LIMIT,
        )
        node.proc = proc
        node.starts += 1
        node.pids.append(proc.pid)
        self.say(f"started {node.spec.name} pid {proc.pid}")
        log: BinaryIO | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{node.spec.name}.log", "ab")  # noqa: SIM115
        streams = [s for s in (proc.stdout, proc.stderr) if s is not None]
        self._helper(self._relay(node.spec.name, streams, log))
        return proc

    def _helper(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    async def _relay(
        self, name: str, streams: list[asyncio.StreamReader], log: BinaryIO | None
    ) -> None:
        """Print each line of the child's output with its name in front (and log it)."""
        prefix = f"{name:<{self._width}} | "
        try:
            await asyncio.gather(*(self._relay_one(prefix, s, log) for s in streams))
        finally:
            if log is not None:
                log.close()

    async def _relay_one(
        self, prefix: str, stream: asyncio.StreamReader, log: BinaryIO | None
    ) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than LINE_LIMIT was dropped
                continue
            if not line:
                return
            if log is not None:
                # Small appends to a local file; not worth an executor round trip.
                log.write(line)
                log.flush()
            self.write(prefix + line.decode(errors="replace").rstrip("\r\n"))

    async def _wait_healthy(self, node: _Node, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while not self.stopping.is_set():
                if node.gave_up:
                    self.say(f"{node.spec.name} failed: {node.gave_up}")
                    return False
                if (
                    node.proc is not None
                    and node.proc.returncode is None
                    and await _is_healthy(session, node.spec.health)
                ):
                    node.healthy = node.ever_healthy = True
                    return True
                if time.monotonic() > deadline:
                    self.say(f"{node.spec.name} failed: not healthy after {timeout:g}s")
                    return False
                await asyncio.sleep(0.1)
        return False

    async def _announce_recovery(self, node: _Node, proc: asyncio.subprocess.Process) -> None:
        """After a restart, say when the node is healthy again."""
        async with aiohttp.ClientSession() as session:
            while proc.returncode is None and not self.stopping.is_set():
                if await _is_healthy(session, node.spec.health):
                    node.healthy = node.ever_healthy = True
                    self.say(f"{node.spec.name} is healthy again (pid {proc.pid})")
                    return
                await asyncio.sleep(0.2)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group a child leads (its own session); gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _is_healthy(session: aiohttp.ClientSession, check: HealthCheck) -> bool:
    host, port = check.tcp
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    if not check.http_url:
        return True
    try:
        async with session.get(
            check.http_url, headers=dict(check.headers), timeout=aiohttp.ClientTimeout(total=2.0)
        ) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def _edgeshield_command() -> str:
    """How the user can run `edgeshield` from here."""
    beside = Path(sys.executable).parent / "edgeshield"
    if beside.exists():
        return shlex.quote(str(beside))
    if shutil.which("edgeshield"):
        return "edgeshield"
    return f"{shlex.quote(sys.executable)} -m cli.main"


def format_table(specs: Sequence[NodeSpec], pids: Mapping[str, int]) -> list[str]:
    """The table of what is where: node, role, region, pid, addresses."""
    header = ("NODE", "ROLE", "REGION", "PID", "ADDRESSES")
    rows = [
        (s.name, s.role, s.region, str(pids.get(s.name, "")), "  ".join(s.addresses)) for s in specs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in [header, *rows]
    ]


def try_commands(fleet: Fleet, specs: Sequence[NodeSpec], demo: DemoInfo | None) -> list[str]:
    """A few commands to try against the running fleet."""
    lines: list[str] = []
    host = demo.host if demo else (fleet.services[0].hosts[0] if fleet.services else "")
    path = "/pages/home" if demo else "/"
    for edge in fleet.edges[:3] if host else ():
        lines.append(f"curl -si -H 'Host: {host}' {edge.url}{path}")
    if demo:
        edge_url = fleet.edges[0].url
        lines.append(
            f"curl -s -o /dev/null -D - -H 'Host: {host}' -H 'Accept-Encoding: br' "
            f"{edge_url}/pages/home"
        )
        lines.append(f"curl -s -X POST {demo.origin_url}/admin/bump")
    if fleet.purge_api is not None and fleet.services:
        token = shlex.quote(demo.token) if demo else "YOUR_TOKEN"
        service = demo.service if demo else fleet.services[0].name
        target = "--tag pages" if demo else "--all"
        lines.append(
            f"EDGESHIELD_TOKEN={token} {_edgeshield_command()} purge "
            f"--api {fleet.purge_api.url} --service {service} {target} --wait 5"
        )
    if fleet.geo is not None:
        dns_host, dns_port = split_host_port(fleet.geo.dns_listen)
        name = f"{fleet.services[0].name}.{fleet.geo.zone}" if fleet.services else fleet.geo.zone
        for region in fleet.regions:
            for network in region.client_networks[:1]:
                lines.append(
                    f"dig @{dns_host} -p {dns_port} {name} A +subnet={network}    # {region.name}"
                )
        http_host, http_port = split_host_port(fleet.geo.http_listen)
        route_url = f"http://{_url_host(http_host)}:{http_port}"
        sample = next((r.client_networks[0] for r in fleet.regions if r.client_networks), "")
        if sample:
            sample_net = ipaddress.ip_network(sample, strict=False)
            ip = sample_net[10] if sample_net.num_addresses > 10 else sample_net[0]
            lines.append(f"curl -s '{route_url}/v1/route?ip={ip}'")
    return lines


def _print(line: str) -> None:
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run_up(config: str | None, state_dir: str | None) -> int:
    """Run a fleet (or the demo) until SIGINT/SIGTERM; 0 after a clean stop."""
    return asyncio.run(_up(config, state_dir))


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
    specs = plan_fleet(fleet, str(config_path), secret, demo)
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
        _print("try:")
        for line in try_commands(fleet, specs, demo):
            _print(f"  {line}")
        _print("Ctrl-C stops the fleet.")
        await stopped
    _print("edgeshield: stopping")
    starting.cancel()
    await supervisor.stop()
    _print("edgeshield: stopped")
    return 0


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
        *_cli("geo", "build-mmdb", "--config", config_path, "-o", fleet.geo.mmdb),
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
