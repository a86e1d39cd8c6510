"""An edge on a chosen client-facing front, an origin for uploads and large bodies,
and a look at the edge's memory: what the front's tests share.

`front_edge(root, origin, front=..., keys=...)` writes a one-edge fleet.toml (no
shields) whose edge table carries `front = "..."` and the extra `keys`, starts the
edge as a real process and waits until it listens. `BulkOrigin` is a real aiohttp
origin on 127.0.0.1 that streams large bodies without holding them (`/big/{bytes}`)
and counts the bytes of uploads as they arrive (`POST /upload/...`). `rss_bytes(pid)`
reads a process's resident memory from /proc.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from fleet.config import Fleet, load_fleet
from tests.support.fleetfile import FleetSpec
from tests.support.ports import free_port
from tests.support.processes import NodeProcess

HOST = "www.example.com"
#: bytes of each chunk `/big/...` sends
CHUNK = 256 * 1024


def pattern(size: int) -> bytes:
    """The bytes of `/big/{size}`: a repeating pattern a client can check."""
    block = bytes(range(256)) * (CHUNK // 256)
    whole, rest = divmod(size, CHUNK)
    return block * whole + block[:rest]


class BulkOrigin:
    """Large bodies streamed, and uploads counted as they arrive, never held whole."""

    def __init__(self) -> None:
        self.port = free_port()
        #: bytes received by each finished upload, by target
        self.uploads: dict[str, int] = {}
        #: bytes received so far by the upload under way, by target
        self.receiving: dict[str, int] = {}
        self.gets: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method in ("POST", "PUT"):
            received = 0
            async for chunk in request.content.iter_any():
                received += len(chunk)
                self.receiving[path] = received
            self.uploads[path] = received
            return web.Response(text=f"received {received}\n")
        self.gets[path] = self.gets.get(path, 0) + 1
        if path.startswith("/big/"):
            size = int(path.removeprefix("/big/").partition("/")[0])
            response = web.StreamResponse(
                headers={
                    "Cache-Control": "max-age=600",
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                }
            )
            await response.prepare(request)
            block = pattern(CHUNK)
            sent = 0
            while sent < size:
                piece = block[: min(CHUNK, size - sent)]
                await response.write(piece)
                sent += len(piece)
            await response.write_eof()
            return response
        return web.Response(
            text=f"ok {request.raw_path}\n", headers={"Cache-Control": "max-age=600"}
        )

    def start(self) -> BulkOrigin:
        """Serve on 127.0.0.1 from a thread of its own."""
        self._thread.start()

        async def setup() -> None:
            self._runner = web.ServerRunner(web.Server(self._handle, access_log=None))
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(setup(), self._loop).result(10)
        return self

    def close(self) -> None:
        """Stop serving and end the thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def front_fleet(root: Path, origin: str, front: str, keys: str = "") -> Fleet:
    """A fleet.toml of one edge (no shields) on `front`, with `keys` added to its table."""
    spec = FleetSpec(root, origins=[origin], edges=1, shields=0)
    text = spec.render().replace(
        "[[edges]]\n", f'[[edges]]\nfront = "{front}"\n{keys.rstrip()}\n'.replace("\n\n", "\n")
    )
    path = root / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    return load_fleet(path)


@contextmanager
def running_edge(
    root: Path, origin: str, front: str, keys: str = ""
) -> Iterator[tuple[Fleet, NodeProcess]]:
    """The edge of `front_fleet(...)` as a real process, stopped on exit."""
    fleet = front_fleet(root, origin, front, keys)
    edge = fleet.edges[0]
    node = NodeProcess(
        ["edge", "--config", fleet.source, "--node", edge.name],
        root / f"{edge.name}-{front}.log",
        # EDGESHIELD_FRONT would override the fleet file's choice
        env={"EDGESHIELD_ACCESS_LOG": "0", "EDGESHIELD_FRONT": front},
    ).start()
    try:
        node.wait_listening(edge.listen).wait_listening(edge.admin_listen)
        yield fleet, node
    finally:
        node.stop()


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to a node's http://host:port."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    return await asyncio.open_connection(host, int(port), limit=1024 * 1024)


async def read_response(
    reader: asyncio.StreamReader, timeout: float = 15.0
) -> tuple[str, dict[str, str], bytes]:
    """One response with a Content-Length (or no) body: (status line, headers, body)."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
    return lines[0], headers, body
