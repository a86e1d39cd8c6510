"""A misbehaving origin for adversarial tests: a raw asyncio TCP server on 127.0.0.1.

Unlike `tests.support.origin.OriginServer` (a well-behaved aiohttp server), this one
writes its responses byte by byte, so it can break HTTP/1.1 framing on purpose:

- `/endless...`: a close-delimited body (no Content-Length, not chunked) that never
  ends; `/closed...`: a close-delimited body of `CLOSED_SIZE` bytes, then the close
- `/bomb.br`, `/bomb.gz`: decompression bombs labelled `Content-Encoding: br` / `gzip`
  (1 GiB of zeros in about 1.6 KB of br, or `GZIP_BOMB_SIZE` of zeros in gzip)
- `/declared-big...`: a Content-Length above the test's object limit, body sent whole
- `/chunked-big...`: a chunked body that grows past the object limit
- `/long...`: a body longer than its Content-Length, the extra bytes shaped like a
  second response (on a kept-alive connection: a response-splitting attempt); sent
  with the body, or for `/long-late...` a moment after it
- `/short...`: a body shorter than its Content-Length, then the close
- `/slow...`: a Content-Length body trickled in small pieces
- `/bad-chunk...`: a chunked body with a malformed chunk size
- `/healthz` and anything else: a small cacheable 200 naming its path

It runs its own event loop in a thread, so synchronous tests use it beside real
processes, and counts requests (`count(path)`) and body bytes sent (`sent(path)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import zlib
from collections import Counter

import brotli

from tests.support.ports import free_port

#: bytes the br bomb decodes to
BR_BOMB_SIZE = 1024**3
#: bytes the gzip bomb decodes to (deflate's ratio is at most about 1000:1, so this
#: one is about 256 KB on the wire)
GZIP_BOMB_SIZE = 256 * 1024**2
#: body bytes of a `/closed...` answer
CLOSED_SIZE = 100_000
#: size of the body pieces the origin writes
PIECE = 64 * 1024
#: the longest request head read
HEAD_LIMIT = 16 * 1024
CACHEABLE = "Cache-Control: max-age=3600\r\n"


@functools.cache
def br_bomb() -> bytes:
    """`BR_BOMB_SIZE` zero bytes in br (made once per process, without holding them)."""
    compressor = brotli.Compressor(quality=5)
    zeros = bytes(1024 * 1024)
    parts = [compressor.process(zeros) for _ in range(BR_BOMB_SIZE // len(zeros))]
    parts.append(compressor.finish())
    return b"".join(parts)


@functools.cache
def gzip_bomb() -> bytes:
    """`GZIP_BOMB_SIZE` zero bytes in gzip (made once per process)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(GZIP_BOMB_SIZE // len(zeros))]
    parts.append(compressor.flush())
    return b"".join(parts)


def pattern(size: int) -> bytes:
    """`size` deterministic bytes (incompressible enough for size tests)."""
    block = bytes((i * 31 + 7) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


class HostileOrigin:
    """The misbehaving origin; `start()` it and `stop()` it."""

    def __init__(self, object_limit: int) -> None:
        """`object_limit`: the object size limit of the fleet under test (sizes of
        the too-large answers are chosen past it)."""
        self.port = free_port()
        self.object_limit = object_limit
        self.requests: Counter[str] = Counter()
        self.body_sent: Counter[str] = Counter()
        #: answers being written now, by path
        self.active: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """The origin's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def count(self, path: str) -> int:
        """Requests seen for `path`."""
        return self.requests[path]

    def sent(self, path: str) -> int:
        """Body bytes written for `path` (all requests together)."""
        return self.body_sent[path]

    def start(self) -> HostileOrigin:
        """Listen on 127.0.0.1:port (the bombs are made first)."""
        br_bomb()
        gzip_bomb()
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def stop(self) -> None:
        """Close every connection and the listener, and end the thread."""
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                if len(head) > HEAD_LIMIT:
                    return
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = line.split(" ")
                if len(parts) != 3:
                    return
                path = parts[1]
                self.requests[path] += 1
                self.active[path] += 1
                try:
                    keep_alive = await self._answer(path, writer)
                finally:
                    self.active[path] -= 1
                if not keep_alive:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _body(self, path: str, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.body_sent[path] += len(data)
        await writer.drain()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> bool:
        """Write the answer for `path`; whether the connection stays open after it."""
        base = "HTTP/1.1 200 OK\r\n" + CACHEABLE + "Content-Type: application/octet-stream\r\n"
        if path.startswith("/endless"):
            writer.write((base + "Connection: close\r\n\r\n").encode())
            piece = pattern(PIECE)
            while True:
                await self._body(path, writer, piece)
        if path.startswith("/closed"):
            writer.write((base + "Connection: close\r\n\r\n").encode())
            await self._body(path, writer, pattern(CLOSED_SIZE))
            return False
        if path.startswith("/bomb.br") or path.startswith("/bomb.gz"):
            body = br_bomb() if path.startswith("/bomb.br") else gzip_bomb()
            coding = "br" if path.startswith("/bomb.br") else "gzip"
            writer.write(
                (
                    base + f"Content-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
            )
            await self._body(path, writer, body)
            return True
        if path.startswith("/declared-big"):
            size = self.object_limit + 1024 * 1024
            writer.write((base + f"Content-Length: {size}\r\n\r\n").encode())
            piece = pattern(PIECE)
            left = size
            while left:
                await self._body(path, writer, piece[: min(left, PIECE)])
                left -= min(left, PIECE)
            return True
        if path.startswith("/chunked-big"):
            writer.write((base + "Transfer-Encoding: chunked\r\n\r\n").encode())
            piece = pattern(PIECE)
            frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            for _ in range(self.object_limit // PIECE + 64):
                await self._body(path, writer, frame)
            await self._body(path, writer, b"0\r\n\r\n")
            return True
        if path.startswith("/long"):
            body = b"the real body\n"
            smuggled = (
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\n"
                b"Content-Length: 9\r\n\r\nsmuggled\n"
            )
            writer.write((base + f"Content-Length: {len(body)}\r\n\r\n").encode())
            if path.startswith("/long-late"):
                # the extra bytes once the client has put the connection back in its pool
                await self._body(path, writer, body)
                await asyncio.sleep(0.1)
                await self._body(path, writer, smuggled)
            else:
                await self._body(path, writer, body + smuggled)
            return True
        if path.startswith("/short"):
            writer.write((base + "Content-Length: 200000\r\nConnection: close\r\n\r\n").encode())
            await self._body(path, writer, pattern(100_000))
            return False
        if path.startswith("/slow"):
            body = pattern(20_000)
            writer.write((base + f"Content-Length: {len(body)}\r\n\r\n").encode())
            for pos in range(0, len(body), 2000):
                await self._body(path, writer, body[pos : pos + 2000])
                await asyncio.sleep(0.02)
            return True
        if path.startswith("/bad-chunk"):
            writer.write((base + "Transfer-Encoding: chunked\r\n\r\n").encode())
            await writer.drain()
            # the head first, on its own: the client has handed the body's reader out
            # by the time the broken framing arrives
            await asyncio.sleep(0.05)
            await self._body(path, writer, b"10\r\n0123456789abcdef\r\nzz-not-hex\r\nxx\r\n")
            return False
        body = f"plain {path}\n".encode()
        writer.write((base + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        await writer.drain()
        return True
