"""An origin that sends informational responses the way a hostile one would, for the
conformance adversarial tests: a raw asyncio TCP server on 127.0.0.1, in a thread.

- `/hints-flood...`: `FLOOD` 103 Early Hints, each with a Link and a field its own
  Connection names (hop-by-hop, never to be passed on), then a cacheable 200
- anything else: a small cacheable 200 naming its path
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter

from tests.support.ports import free_port

#: 103s sent before the final answer of a `/hints-flood...` path
FLOOD = 2000
HEAD_LIMIT = 16 * 1024


class HintsOrigin:
    """The origin above, started and stopped by the test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HintsOrigin:
        """Start serving."""
        self._thread.start()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        return self

    def close(self) -> None:
        """Stop serving and end the thread."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > HEAD_LIMIT:
                    break
                path = head.split(b" ", 2)[1].decode("latin-1")
                if path != "/healthz":
                    self.requests[path] += 1
                if path.startswith("/hints-flood"):
                    hint = (
                        b"HTTP/1.1 103 Early Hints\r\n"
                        b"Link: </flood.css>; rel=preload\r\n"
                        b"Connection: X-Secret\r\n"
                        b"X-Secret: hop-by-hop\r\n\r\n"
                    )
                    for _ in range(FLOOD):
                        writer.write(hint)
                        await writer.drain()
                body = path.encode("latin-1")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        writer.close()
