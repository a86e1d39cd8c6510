"""A fleet whose purge API runs as replicas on a JetStream log, as real processes.

`HaPurgeFleet` is a `PurgeFleet` whose fleet file says `[purge_api] log =
"jetstream"`, lists one address per replica in `[purge_api] listen`, and points
`[nats]` at a real `NatsCluster`; it starts the cluster, then every replica
(`edgeshield purge-api --config F --listen ADDR`), then the nodes. Each replica can
be killed with SIGKILL and started again, and the API calls take the replica to ask.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from fleet.config import load_fleet
from tests.support.nats_cluster import NatsCluster
from tests.support.ports import free_port
from tests.support.processes import NodeProcess
from tests.support.purge_fleet import API_AUTH, PurgeFleet


class HaPurgeFleet(PurgeFleet):
    """Purge API replicas on a 3-server NATS cluster, shields and edges."""

    def __init__(
        self,
        root: Path,
        origins: list[str],
        started: list[NodeProcess],
        *,
        replicas: int = 2,
        nats_servers: int = 3,
        edges: int = 2,
        shields: int = 1,
    ) -> None:
        super().__init__(root, origins, started, edges=edges, shields=shields)
        self.cluster = NatsCluster(root / "nats", nats_servers)
        self.replica_addresses = [f"127.0.0.1:{free_port()}" for _ in range(replicas)]
        listen = ", ".join(f'"{a}"' for a in self.replica_addresses)
        text = self.path.read_text(encoding="utf-8")
        assert self.fleet.purge_api is not None
        text = text.replace(
            f'listen = "{self.fleet.purge_api.listen}"\n',
            f'listen = [{listen}]\nlog = "jetstream"\n',
            1,
        )
        self.path.write_text(text + "\n" + self.cluster.toml(), encoding="utf-8")
        self.fleet = load_fleet(self.path)
        self.api_url = f"http://{self.replica_addresses[0]}"
        self.replicas: dict[int, NodeProcess] = {}

    def replica_url(self, index: int) -> str:
        """Base URL of replica `index` (0 is A, 1 is B)."""
        return f"http://{self.replica_addresses[index]}"

    def start_api(self) -> None:
        """Start the NATS cluster (first time only), then every replica."""
        if not self.cluster.running():
            self.cluster.start()
        for index in range(len(self.replica_addresses)):
            self.start_replica(index)

    def start_replica(self, index: int) -> None:
        """Start (or start again) replica `index` and wait until it listens."""
        address = self.replica_addresses[index]
        process = NodeProcess(
            ["purge-api", "--config", str(self.path), "--listen", address],
            self._log_path(f"purge-api-{index}"),
        ).start()
        self.started.append(process)
        self.replicas[index] = process
        self.api = process
        process.wait_listening(address, timeout=30.0)

    def kill_replica(self, index: int) -> None:
        """SIGKILL replica `index`, as a lost machine would."""
        self.replicas[index].kill()

    def stop(self) -> None:
        """Stop every process, then every NATS server, by PID."""
        try:
            super().stop()
        finally:
            self.cluster.stop()

    def logs(self) -> str:
        """The end of every node's and replica's output."""
        parts = [super().logs()]
        parts += [f"--- replica {i}\n{p.log()[-2000:]}" for i, p in self.replicas.items()]
        return "\n".join(parts)

    async def purge_at(
        self,
        index: int,
        session: aiohttp.ClientSession,
        body: Mapping[str, object],
        *,
        wait: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
        """POST a purge to replica `index`: (status, JSON answer, headers)."""
        url = f"{self.replica_url(index)}/v1/services/site/purge?wait={wait:g}"
        async with session.post(
            url, json=dict(body), headers={**API_AUTH, **(headers or {})}
        ) as response:
            return response.status, await response.json(content_type=None), response.headers

    async def status_at(
        self, index: int, session: aiohttp.ClientSession, purge_id: str, wait: float = 0.0
    ) -> dict[str, Any]:
        """GET /v1/purges/{id}[?wait=] from replica `index` (must answer 200)."""
        url = f"{self.replica_url(index)}/v1/purges/{purge_id}?wait={wait:g}"
        async with session.get(url, headers=API_AUTH) as response:
            data: dict[str, Any] = await response.json(content_type=None)
            assert response.status == 200, (response.status, data)
            return data
