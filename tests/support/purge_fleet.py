"""A whole fleet with its purge API, as real processes, for end-to-end purge tests.

`PurgeFleet` writes a fleet.toml (via `FleetSpec`, with a `[purge_api]` table and
optionally `workers = N` on some edges), starts the purge API, then every shield,
then every edge (`python -m cli.main ...`), and waits until each node's admin
`/healthz` says ready. It can SIGKILL and restart the API, stop and start a node,
and speaks the purge API (`purge`, `status`, `until_complete`) and the admin health
check for the tests.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from fleet.config import Fleet, NodeConfig, load_fleet
from tests.support.fleetfile import TEST_NODE_SECRET, TEST_TOKEN, FleetSpec
from tests.support.processes import NodeProcess

#: What a caller of the purge API sends (the test token may purge service "site").
API_AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
#: What the API and the nodes send each other (and what a node's admin listener needs).
NODE_AUTH = {"Authorization": f"Bearer {TEST_NODE_SECRET}"}


def with_workers(toml_text: str, workers: Mapping[str, int]) -> str:
    """`toml_text` with `workers = N` added to the named nodes' tables."""
    for name, count in workers.items():
        line = f'name = "{name}"\n'
        if line not in toml_text:
            raise ValueError(f"no node named {name!r} in the fleet file")
        if f"{line}workers = 1\n" in toml_text:
            line += "workers = 1\n"
        toml_text = toml_text.replace(line, f'name = "{name}"\nworkers = {count}\n', 1)
    return toml_text


class PurgeFleet:
    """The purge API, shields and edges of one fleet.toml, run as real processes."""

    def __init__(
        self,
        root: Path,
        origins: list[str],
        started: list[NodeProcess],
        *,
        edges: int = 3,
        shields: int = 2,
        workers: Mapping[str, int] | None = None,
        service_extra: str = "",
    ) -> None:
        self.root = root
        self.spec = FleetSpec(
            root,
            origins=origins,
            edges=edges,
            shields=shields,
            with_purge_api=True,
            service_extra=service_extra,
        )
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "fleet.toml"
        self.path.write_text(with_workers(self.spec.render(), workers or {}), encoding="utf-8")
        self.fleet: Fleet = load_fleet(self.path)
        assert self.fleet.purge_api is not None
        self.api_url = self.fleet.purge_api.url
        self.started = started
        self.nodes: dict[str, NodeProcess] = {}
        self.api: NodeProcess | None = None
        self._runs: dict[str, int] = {}

    # -- names and addresses ------------------------------------------------------------
    @property
    def shield_names(self) -> list[str]:
        """The shields, as named in fleet.toml."""
        return [s.name for s in self.fleet.shields]

    @property
    def edge_names(self) -> list[str]:
        """The edges, as named in fleet.toml."""
        return [e.name for e in self.fleet.edges]

    @property
    def node_names(self) -> list[str]:
        """Every node that must acknowledge a purge: shields and edges."""
        return [n.name for n in self.fleet.nodes]

    def config(self, name: str) -> NodeConfig:
        """The fleet.toml entry of a node."""
        return next(n for n in self.fleet.nodes if n.name == name)

    def url(self, name: str) -> str:
        """Base URL of a node's traffic listener."""
        return self.config(name).url

    # -- processes ----------------------------------------------------------------------
    def start(self) -> PurgeFleet:
        """Start the API, then the shields, then the edges; return when all are ready."""
        self.start_api()
        for group in (self.shield_names, self.edge_names):
            for name in group:
                self._launch(name)
            for name in group:
                self.wait_ready(name)
        return self

    def _log_path(self, name: str) -> Path:
        run = self._runs.get(name, 0)
        self._runs[name] = run + 1
        return self.root / "logs" / f"{name}.{run}.log"

    def start_api(self) -> None:
        """Start (or start again) the purge API and wait until it listens."""
        assert self.fleet.purge_api is not None
        self.api = NodeProcess(
            ["purge-api", "--config", str(self.path)], self._log_path("purge-api")
        ).start()
        self.started.append(self.api)
        self.api.wait_listening(self.fleet.purge_api.listen)

    def kill_api(self) -> None:
        """SIGKILL the purge API, as a crash would."""
        assert self.api is not None
        self.api.kill()

    def _launch(self, name: str) -> NodeProcess:
        role = "shield" if name in self.shield_names else "edge"
        node = NodeProcess(
            [role, "--config", str(self.path), "--node", name],
            self._log_path(name),
            env={"EDGESHIELD_ACCESS_LOG": "0"},
        ).start()
        self.started.append(node)
        self.nodes[name] = node
        return node

    def stop_node(self, name: str) -> None:
        """Stop a node cleanly (SIGTERM)."""
        self.nodes[name].stop()

    def start_node(self, name: str) -> NodeProcess:
        """Start a stopped node again (same addresses, cache and purge state); no wait."""
        return self._launch(name)

    def wait_ready(self, name: str, timeout: float = 20.0) -> None:
        """Block until a node's admin /healthz answers 200 and its traffic port listens."""
        node = self.nodes[name]
        config = self.config(name)
        node.wait_listening(config.admin_listen, timeout)
        deadline = time.monotonic() + timeout
        while True:
            status = _sync_healthz(config.admin_url)
            if status == 200:
                break
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{node.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout}s:\n{node.log()[-3000:]}")
            time.sleep(0.05)
        node.wait_listening(config.listen, timeout)

    def stop(self) -> None:
        """Stop every process this fleet started, newest first."""
        for process in reversed(self.started):
            process.stop()

    def logs(self) -> str:
        """The end of every process's output (for assertion messages)."""
        parts = [f"--- {name}\n{node.log()[-2000:]}" for name, node in self.nodes.items()]
        if self.api is not None:
            parts.append(f"--- purge-api\n{self.api.log()[-2000:]}")
        return "\n".join(parts)

    # -- the purge API ------------------------------------------------------------------
    async def purge(
        self,
        session: aiohttp.ClientSession,
        body: Mapping[str, object],
        *,
        wait: float = 10.0,
        service: str = "site",
    ) -> tuple[int, dict[str, Any]]:
        """POST a purge; (HTTP status, JSON answer)."""
        url = f"{self.api_url}/v1/services/{service}/purge?wait={wait:g}"
        async with session.post(url, json=dict(body), headers=API_AUTH) as response:
            return response.status, await response.json(content_type=None)

    async def status(self, session: aiohttp.ClientSession, purge_id: str) -> dict[str, Any]:
        """GET /v1/purges/{id} (must answer 200)."""
        async with session.get(f"{self.api_url}/v1/purges/{purge_id}", headers=API_AUTH) as r:
            data: dict[str, Any] = await r.json(content_type=None)
            assert r.status == 200, (r.status, data)
            return data

    async def until_complete(
        self, session: aiohttp.ClientSession, purge_id: str, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Poll a purge's status until it is complete; fail after `timeout` seconds.

        Connection failures are retried: the API may be restarting.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: object = None
        while loop.time() < deadline:
            try:
                last = await self.status(session, purge_id)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
            else:
                if isinstance(last, dict) and last.get("status") == "complete":
                    return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"purge {purge_id} not complete after {timeout}s: {last!r}")

    async def healthz(self, session: aiohttp.ClientSession, name: str) -> tuple[int, Any]:
        """A node's admin /healthz: (status, JSON answer)."""
        url = self.config(name).admin_url + "/healthz"
        async with session.get(url, headers=NODE_AUTH) as response:
            return response.status, await response.json(content_type=None)


def _sync_healthz(admin_url: str) -> int:
    """The status of a node's admin /healthz, or 0 when it cannot be reached."""
    request = urllib.request.Request(admin_url + "/healthz", headers=NODE_AUTH)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def propagation_ms(cli_output: str) -> float | None:
    """The propagation time `edgeshield purge --wait` printed, in milliseconds."""
    found = re.search(r"propagation ([\d.]+) ms", cli_output)
    return float(found.group(1)) if found else None


def running_purge_fleet(root: Path, origins: list[str], **shape: Any) -> Iterator[PurgeFleet]:
    """A started `PurgeFleet` (`shape`: its edges, shields, workers, service_extra),
    stopped when the generator closes: the body of a module fixture, `yield from` it."""
    fleet = PurgeFleet(root, origins, [], **shape)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()
