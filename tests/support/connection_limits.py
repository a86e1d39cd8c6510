"""Helpers for the connection-limit attacks: a gated origin, raw sockets, node metrics.

`GatedOrigin` is a real origin whose `/gate` requests hang until the test opens the
gate, so a test can keep connections busy for exactly as long as it needs them.
`limits_fleet` writes a fleet.toml whose edges carry extra keys (the limits under
test). `RawClient` speaks HTTP/1.1 over a plain socket, byte by byte if asked, and
`node_metric` reads one number from a node's `/metrics`.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import aiohttp
from aiohttp import web

from fleet.config import Fleet, load_fleet
from tests.support.fleetfile import TEST_NODE_SECRET, FleetSpec
from tests.support.ports import free_port
from tests.support.waiting import eventually

HOST = "www.example.com"


class GatedOrigin:
    """An origin on 127.0.0.1: `/gate/NAME` waits for `open_gate(NAME)`; else a 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.gate_requests: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.ServerRunner | None = None
        self._gates: dict[str, asyncio.Event] = {}

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/gate/"):
            name = request.path.removeprefix("/gate/")
            self.gate_requests[name] = self.gate_requests.get(name, 0) + 1
            await self._gates.setdefault(name, asyncio.Event()).wait()
            return web.Response(text="through the gate\n", headers={"Cache-Control": "no-store"})
        return web.Response(text=f"ok {request.path}\n", headers={"Cache-Control": "max-age=60"})

    def start(self) -> GatedOrigin:
        """Serve, with every gate closed."""
        self._thread.start()

        async def setup() -> None:
            self._runner = web.ServerRunner(web.Server(self._handle, access_log=None))
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(setup(), self._loop).result(10)
        return self

    def open_gate(self, name: str) -> None:
        """Let every waiting and future `/gate/NAME` request through."""

        def open_now() -> None:
            self._gates.setdefault(name, asyncio.Event()).set()

        self._loop.call_soon_threadsafe(open_now)

    def close(self) -> None:
        """Open every gate, stop serving and end the thread."""
        for name in list(self._gates):
            self.open_gate(name)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def limits_fleet(root: Path, origin: str, edge_keys: list[str]) -> Fleet:
    """A fleet of one edge per entry of `edge_keys` (TOML lines added to that edge)."""
    spec = FleetSpec(root, origins=[origin], edges=len(edge_keys), shields=0)
    text = spec.render()
    parts = text.split("[[edges]]\n")
    for index, keys in enumerate(edge_keys):
        part = parts[index + 1]
        if "workers" in keys:
            part = part.replace("workers = 1\n", "", 1)
        parts[index + 1] = keys.rstrip("\n") + "\n" + part
    path = root / "fleet.toml"
    path.write_text("[[edges]]\n".join(parts), encoding="utf-8")
    return load_fleet(path)


async def node_metric(admin_url: str, name: str) -> float:
    """The value of metric `name` (summed over its label sets) on a node's admin listener."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(
            admin_url + "/metrics", headers={"Authorization": f"Bearer {TEST_NODE_SECRET}"}
        ) as response,
    ):
        text = await response.text()
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


async def metric_at_least(admin_url: str, name: str, value: float, timeout: float = 15.0) -> float:
    """Wait until metric `name` reaches `value`; returns what it reached."""
    seen = 0.0

    async def reached() -> bool:
        nonlocal seen
        seen = await node_metric(admin_url, name)
        return seen >= value

    await eventually(reached, f"{name} >= {value} (last {seen})", timeout)
    return seen


class RawClient:
    """One client connection over a plain socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str) -> RawClient:
        """Open a TCP connection to a node's http://host:port."""
        host, _, port = url.removeprefix("http://").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """Send bytes; False if the peer has closed the connection."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def closed_within(self, timeout: float) -> bool:
        """True if the peer closes (EOF or reset) within `timeout`, reading whatever comes."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            return True
        return True

    async def response(self, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """Read one response with a Content-Length body: (status, headers, body)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def close(self) -> None:
        """Close our end."""
        self.writer.close()


def get_request(path: str, host: str = HOST) -> bytes:
    """A plain keep-alive GET for `path`."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
