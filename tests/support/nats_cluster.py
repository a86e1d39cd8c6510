"""A real NATS JetStream cluster on loopback for tests and benchmarks: `nats-server` processes.

Each server gets free ports (client, cluster route, monitoring) and its own store
directory; `start()` returns once every server says JetStream is healthy
(`/healthz` on its monitoring port) and the cluster has a meta leader. Every server
is stopped by its PID. Debian's `nats-server` package provides the binary; a machine
without it fails here with a message saying so (tests never skip for it).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port
from tests.support.processes import wait_for_port


def nats_server_binary() -> str:
    """The path of `nats-server`; a clear error when it is not installed."""
    path = shutil.which("nats-server")
    if path is None:
        raise RuntimeError(
            "nats-server is not on PATH: install Debian's package (apt-get install nats-server); "
            "the JetStream purge log's tests run a real NATS cluster"
        )
    return path


@dataclass
class NatsServer:
    """One `nats-server` of the cluster: its ports, store and process."""

    name: str
    root: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL, nats://127.0.0.1:PORT."""
        return f"nats://127.0.0.1:{self.port}"

    def config(self, routes: list[int]) -> str:
        """The server's configuration file text."""
        store = self.root / self.name / "store"
        route_list = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        return (
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(store))}\n"
            "  max_memory_store: 64MB\n  max_file_store: 1GB\n}\n"
            f'cluster {{\n  name: "edgeshield-test"\n  listen: 127.0.0.1:{self.cluster_port}\n'
            f"  routes: [{route_list}]\n}}\n"
        )

    def start(self, routes: list[int]) -> None:
        """Start the process (its log in its directory)."""
        directory = self.root / self.name
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "nats.conf"
        conf.write_text(self.config(routes), encoding="utf-8")
        log = open(directory / "nats.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self) -> None:
        """SIGKILL this server, by its PID, as a lost machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM this server by its PID; SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def monitor(self, path: str) -> dict[str, object] | None:
        """GET a monitoring endpoint as JSON, or None if it does not answer 200."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=2
            ) as response:
                data = json.loads(response.read())
                return data if isinstance(data, dict) else None
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def healthy(self) -> bool:
        """Whether the server says JetStream is up and current (`/healthz`)."""
        health = self.monitor("/healthz")
        return health is not None and health.get("status") == "ok"


class NatsCluster:
    """`size` nats-servers routed to each other, JetStream on, each with its own store."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.servers = [NatsServer(f"n{i + 1}", root) for i in range(size)]

    @property
    def urls(self) -> list[str]:
        """Every server's client URL."""
        return [server.url for server in self.servers]

    def toml(self, stream: str = "edgeshield-purges") -> str:
        """A fleet file's [nats] table pointing at this cluster."""
        servers = ", ".join(f'"{url}"' for url in self.urls)
        return f'[nats]\nservers = [{servers}]\nstream = "{stream}"\n'

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every server and wait until each is healthy and a meta leader is elected."""
        for server in self.servers:
            routes = [other.cluster_port for other in self.servers if other is not server]
            server.start(routes)
        try:
            for server in self.servers:
                wait_for_port("127.0.0.1", server.port, timeout, server.proc)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> list[NatsServer]:
        """The servers whose process is alive."""
        return [s for s in self.servers if s.proc is not None and s.proc.poll() is None]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until every running server is healthy and knows the meta leader."""
        deadline = time.monotonic() + timeout
        while True:
            servers = self.running()
            if servers and all(s.healthy() and _meta_leader(s) for s in servers):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the NATS cluster was not ready after {timeout}s")
            time.sleep(0.1)

    def stream_leader(self, stream: str) -> NatsServer | None:
        """The server that leads `stream`'s Raft group now, as the cluster reports it."""
        for server in self.running():
            jsz = server.monitor("/jsz?accounts=true&streams=true")
            accounts = jsz.get("account_details") if jsz else None
            for account in accounts if isinstance(accounts, list) else []:
                for detail in account.get("stream_detail") or []:
                    leader = (detail.get("cluster") or {}).get("leader")
                    if detail.get("name") == stream and leader:
                        return next((s for s in self.servers if s.name == leader), None)
        return None

    def stop(self) -> None:
        """Stop every server by its PID."""
        for server in self.servers:
            server.stop()


def _meta_leader(server: NatsServer) -> bool:
    jsz = server.monitor("/jsz")
    if jsz is None:
        return False
    meta = jsz.get("meta_cluster")
    return isinstance(meta, dict) and bool(meta.get("leader"))
