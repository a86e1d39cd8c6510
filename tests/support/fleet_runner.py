"""A whole tiered fleet for end-to-end tests: shields and edges as real processes.

`TieredFleet` writes a fleet.toml (via `FleetSpec`), starts every shield and edge with
`python -m cli.main`, waits until each listens, and can kill (SIGKILL) and restart
one node. `get()` is a small client that records status, headers and body, and
`shield_for()` says which shield the ring prefers for a path, computed the way every
edge computes it.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from multidict import CIMultiDictProxy

from edge.cache.keys import normalize_target, primary_key
from edge.upstream import rendezvous_order
from fleet.config import Fleet, NodeConfig, load_fleet
from tests.support.fleetfile import FleetSpec
from tests.support.ports import free_port
from tests.support.processes import NodeProcess

HOST = "www.example.com"
SERVICE = "site"


@dataclass(frozen=True)
class Reply:
    """What a client got back."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def cache_status(self) -> list[str]:
        """The Cache-Status entries (RFC 9211), upstream-most first."""
        value = ", ".join(self.headers.getall("Cache-Status", []))
        return [entry.strip() for entry in value.split(",") if entry.strip()]

    @property
    def tiers(self) -> list[str]:
        """The node names in Cache-Status, upstream-most first."""
        return [entry.split(";", 1)[0].strip() for entry in self.cache_status]


async def get(
    session: aiohttp.ClientSession,
    base_url: str,
    path: str,
    *,
    host: str = HOST,
    headers: dict[str, str] | None = None,
) -> Reply:
    """GET `path` from a node with the service's Host; the whole body is read."""
    async with session.get(
        base_url + path, headers={"Host": host, **(headers or {})}, allow_redirects=False
    ) as response:
        body = await response.read()
        return Reply(response.status, response.headers, body)


def client_session(
    timeout: float = 20.0, local_address: str | None = None
) -> aiohttp.ClientSession:
    """A client session with a hard total timeout (so a hang fails, not stalls, a test).

    `local_address` binds the client's sockets to that loopback address, so a test
    can tell the client's address from the nodes' (all on 127.0.0.1) further up.
    """
    connector = aiohttp.TCPConnector(
        limit=0, local_addr=(local_address, 0) if local_address else None
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        auto_decompress=False,
    )


def shield_for(path: str, shield_names: list[str]) -> str:
    """The shield every edge asks first for `path` on the test service."""
    target = normalize_target(path, False, ())
    return rendezvous_order(primary_key(SERVICE, HOST, target), shield_names)[0]


class TieredFleet:
    """Shields and edges of one fleet.toml, run as real processes."""

    def __init__(
        self,
        root: Path,
        origins: list[str],
        started: list[NodeProcess],
        *,
        edges: int = 3,
        shields: int = 2,
        service_extra: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.spec = FleetSpec(
            root, origins=origins, edges=edges, shields=shields, service_extra=service_extra
        )
        self.path = self.spec.write()
        self.fleet: Fleet = load_fleet(self.path)
        self.root = root
        self.env = {"EDGESHIELD_ACCESS_LOG": "0", **(env or {})}
        self.started = started
        self.nodes: dict[str, NodeProcess] = {}
        self._restarts: dict[str, int] = {}

    @property
    def shield_names(self) -> list[str]:
        """The shields, as named in fleet.toml."""
        return [s.name for s in self.fleet.shields]

    @property
    def edge_names(self) -> list[str]:
        """The edges, as named in fleet.toml."""
        return [e.name for e in self.fleet.edges]

    def config(self, name: str) -> NodeConfig:
        """The fleet.toml entry of a node."""
        return next(n for n in self.fleet.nodes if n.name == name)

    def url(self, name: str) -> str:
        """Base URL of a node's traffic listener."""
        return self.config(name).url

    def start(self) -> TieredFleet:
        """Start every shield, wait until they listen, then every edge likewise.

        Shields first: an edge probes its shields as it starts, and one not yet
        listening counts as down until the next probe.
        """
        for group in (self.shield_names, self.edge_names):
            for name in group:
                self._launch(name)
            for name in group:
                self.nodes[name].wait_listening(self.config(name).listen)
                self.nodes[name].wait_listening(self.config(name).admin_listen)
        return self

    def _launch(self, name: str) -> NodeProcess:
        role = "shield" if name in self.shield_names else "edge"
        run = self._restarts.get(name, 0)
        node = NodeProcess(
            [role, "--config", str(self.path), "--node", name],
            self.root / "logs" / f"{name}.{run}.log",
            env=self.env,
        )
        node.start()
        self.started.append(node)
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """SIGKILL a node, as a crash would."""
        self.nodes[name].kill()

    def restart(self, name: str) -> None:
        """Start a (killed or stopped) node again on the same addresses and cache."""
        self._restarts[name] = self._restarts.get(name, 0) + 1
        node = self._launch(name)
        node.wait_listening(self.config(name).listen)
        node.wait_listening(self.config(name).admin_listen)

    def logs(self) -> str:
        """Every node's output so far (for assertion messages)."""
        return "\n".join(f"--- {name}\n{node.log()[-3000:]}" for name, node in self.nodes.items())


class SilentOrigin:
    """An origin that accepts connections and never answers: a hung server."""

    def __init__(self) -> None:
        self.port = free_port()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._accepted: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self._accepted.append(conn)

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._stopping.set()
        self._thread.join(5)
        for conn in self._accepted:
            conn.close()
        self._sock.close()
