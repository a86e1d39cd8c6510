"""An origin whose answers carry the fields a cache's miss path must sort out: a
field sent on two lines, hop-by-hop fields, and fields its own Connection names. A
raw asyncio TCP server on 127.0.0.1 in a thread, for tests/security/test_miss_fields.py.

Each path answers a small cacheable 200 naming the path, with fields by its prefix:

- `/twice...`: `X-Twice: one` and `X-Twice: two` on two lines, and two `Link` lines
- `/hop...`: `Connection: keep-alive, X-Hop`, `X-Hop: secret`, `Keep-Alive: timeout=5`
  and `X-Kept: kept` (end to end)
- `/connection-twice...`: two Connection lines, each naming a field (`X-Hop-A`,
  `X-Hop-B`) sent after it
- `/chunked...`: the body chunked (no Content-Length), `X-Twice` on two lines
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter

from tests.support.ports import free_port

HEAD_LIMIT = 16 * 1024

FIELDS = {
    "/twice": (
        b"X-Twice: one\r\nLink: </a.css>; rel=preload\r\n"
        b"X-Twice: two\r\nLink: </b.js>; rel=preload\r\n"
    ),
    "/hop": (
        b"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
        b"X-Kept: kept\r\n"
    ),
    "/connection-twice": (
        b"Connection: X-Hop-A\r\nX-Hop-A: a\r\nConnection: X-Hop-B\r\nX-Hop-B: b\r\n"
        b"X-Kept: kept\r\n"
    ),
    "/chunked": b"X-Twice: one\r\nX-Twice: two\r\n",
}


class MissFieldsOrigin:
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

    def start(self) -> MissFieldsOrigin:
        """Listen (returns once the port is open)."""
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
                fields = next(
                    (value for prefix, value in FIELDS.items() if path.startswith(prefix)), b""
                )
                body = path.encode("latin-1")
                if path.startswith("/chunked"):
                    framing = b"Transfer-Encoding: chunked\r\n"
                    payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
                else:
                    framing = b"Content-Length: %d\r\n" % len(body)
                    payload = body
                writer.write(
                    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\n"
                    + fields
                    + framing
                    + b"\r\n"
                    + payload
                )
                await writer.drain()
        writer.close()
