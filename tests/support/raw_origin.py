"""A hand-written origin for adversarial tests: a raw asyncio TCP server on 127.0.0.1
in a thread of its own, so it can send what no HTTP library would (1xx floods, fields
on repeated lines, hop-by-hop fields), and a real edge process in front of it.

A subclass writes `answer` for one request; the base reads the heads (bounded by
`HEAD_LIMIT`), counts requests per path (the edge's health checks aside), and starts
and stops the server (`with Origin() as origin:` serves for the block).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from tests.support.fleetfile import FleetSpec
from tests.support.ports import free_port
from tests.support.processes import NodeProcess

#: the longest request head an origin reads; a longer one closes the connection
HEAD_LIMIT = 16 * 1024
#: the edge's health check path, answered like any other but not counted
HEALTH_PATH = "/healthz"


class RawOrigin:
    """The server, its thread and its request counts; `answer` is the subclass's."""

    def __init__(self) -> None:
        self.port = free_port()
        #: requests per path, health checks aside
        self.requests: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Listen (returns once the port is open)."""
        self._thread.start()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and end the thread."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def answer(self, path: str, writer: asyncio.StreamWriter) -> None:
        """Write the answer to a request for `path` (drained by the caller)."""
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > HEAD_LIMIT:
                    break
                path = head.split(b" ", 2)[1].decode("latin-1")
                if path != HEALTH_PATH:
                    self.requests[path] += 1
                await self.answer(path, writer)
                await writer.drain()
        writer.close()


@contextlib.contextmanager
def edge_in_front(root: Path, origin: RawOrigin) -> Iterator[str]:
    """A real edge process (fleet files under `root`) whose one service's origin is
    `origin`, health-checked on `HEALTH_PATH`; its client listen address."""
    config = FleetSpec(
        root / "fleet", origins=[origin.url], service_extra=f'health_check_path = "{HEALTH_PATH}"'
    ).write()
    listen = re.findall(r'^listen = "([^"]+)"', config.read_text(), re.M)[0]
    node = NodeProcess(["edge", "--config", str(config), "--node", "edge1"], root / "edge.log")
    node.start()
    try:
        node.wait_listening(listen)
        yield listen
    finally:
        node.stop()
