"""Raw HTTP/1.1 on a socket, and an origin that tells what it received.

`raw_exchange` writes bytes exactly as given (malformed or unusual framing included)
and reads the answer until the server closes; `parse_response` splits it. `EchoOrigin`
is a real aiohttp origin on 127.0.0.1 that records every request whole (method,
target, headers, body) and answers with a JSON body built from what it saw, so a
test can tell from a cached answer which request it was made for.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from tests.support.ports import free_port


async def raw_exchange(address: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` to host:port `address` and read until the peer closes."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()


async def raw_request(address: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` and read one response framed by its Content-Length, without waiting
    for the server to close (so what the server does after the last byte is not
    waited for, as a keep-alive client does not wait for it)."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = parse_response(head).headers.get("Content-Length")
        assert length is not None, head
        body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
        return head + body
    finally:
        writer.close()


@dataclass(frozen=True)
class RawResponse:
    """A response as read off the socket."""

    status: int
    headers: CIMultiDict[str]
    body: bytes


def parse_response(data: bytes) -> RawResponse:
    """The first response in `data` (the body is whatever follows the head)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return RawResponse(status, headers, body)


@dataclass
class Seen:
    """One request as the origin received it."""

    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class EchoOrigin:
    """An origin that records requests and echoes the interesting fields back.

    `routes` maps a path to the response headers it answers with (200 by default;
    a "Status" entry sets another status); unknown paths get 404.
    """

    port: int = field(default_factory=free_port)
    routes: dict[str, dict[str, str]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.ServerRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def requests_for(self, path: str) -> list[Seen]:
        """The requests whose path (query left out) was `path`."""
        return [seen for seen in self.seen if seen.target.split("?", 1)[0] == path]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path, CIMultiDict(request.headers), body))
        self.counts[request.path] += 1
        if request.path == "/healthz":
            return web.Response(text="ok")
        headers = self.routes.get(request.path)
        if headers is None:
            return web.Response(status=404, text="no such route")
        headers = dict(headers)
        status = int(headers.pop("Status", "200"))
        echo = {
            "n": self.counts[request.path],
            "method": request.method,
            "target": request.raw_path,
            "cookie": request.headers.get("Cookie"),
            "authorization": request.headers.get("Authorization"),
            "proto": request.headers.get("X-Forwarded-Proto"),
            "xff": request.headers.get("X-Forwarded-For"),
            "forwarded": request.headers.get("Forwarded"),
            "body": body.decode("latin-1"),
        }
        return web.Response(
            status=status, headers=headers, body=json.dumps(echo).encode(), content_type=None
        )

    def start(self) -> EchoOrigin:
        """Serve in a thread of its own."""
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def setup() -> None:
            self._runner = web.ServerRunner(web.Server(self._handle), access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(setup(), self._loop).result(10)
        return self

    def close(self) -> None:
        """Stop serving and end the thread."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
