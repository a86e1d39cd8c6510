"""Clients for the SNI tests: real ClientHellos from Python's ssl, a TLS client whose
hello the test sends as it likes (a memory BIO over a plain socket), and raw exchanges
with a TLS port.

`BioClient` lets a test dribble the hello a byte at a time, then finish the handshake
and make a request over the same connection; `raw_exchange` sends bytes and reads
everything until the server closes, with how long that took.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from pathlib import Path

from tests.support.tls_fleet import TlsFiles, split, tls_fleet_toml

#: RFC 8446 6: the fatal alert unrecognized_name as one record
UNRECOGNIZED_NAME_ALERT = bytes((21, 3, 3, 0, 2, 2, 112))


class BioClient:
    """A TLS client on a memory BIO: the test moves its bytes over a real socket."""

    def __init__(self, context: ssl.SSLContext, server_name: str | None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)

    def hello(self) -> bytes:
        """The ClientHello's records, as the client would send them."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    async def finish(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Complete the handshake begun by `hello` (whose bytes the test has sent)."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(self.outgoing.read())
                data = await asyncio.wait_for(reader.read(65536), 15)
                if not data:
                    raise ConnectionResetError("closed during the handshake") from None
                self.incoming.write(data)
        writer.write(self.outgoing.read())

    async def get(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str
    ) -> bytes:
        """GET `path` over HTTP/1.1 with Connection: close; the whole answer."""
        self.tls.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        writer.write(self.outgoing.read())
        answer = bytearray()
        while True:
            data = await asyncio.wait_for(reader.read(65536), 15)
            if not data:
                return bytes(answer)
            self.incoming.write(data)
            try:
                while chunk := self.tls.read(65536):
                    answer += chunk
            except ssl.SSLWantReadError:
                continue
            # an empty read: the server's close_notify, the answer is whole
            return bytes(answer)


def client_hello(
    server_name: str | None, *, maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
) -> bytes:
    """A real ClientHello from Python's ssl asking for `server_name` (None: no SNI)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.maximum_version = maximum
    context.set_alpn_protocols(["h2", "http/1.1"])
    return BioClient(context, server_name).hello()


async def raw_exchange(address: str, data: bytes, timeout: float = 20.0) -> tuple[bytes, float]:
    """Send `data` on a plain connection, read until the server closes (a reset ends it
    too); what was read and the seconds until the close."""
    host, port = split(address)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    answer = bytearray()
    try:
        if data:
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(ConnectionResetError):
            while chunk := await asyncio.wait_for(reader.read(65536), timeout):
                answer += chunk
        return bytes(answer), time.monotonic() - started
    finally:
        writer.close()


def sni_fleet_toml(
    root: Path, files: TlsFiles, origin: str, **edge_keys: int
) -> tuple[str, dict[str, str]]:
    """`tls_fleet_toml`'s fleet, its edge given `edge_keys` (workers, max_connections)."""
    text, addresses = tls_fleet_toml(root, files, origin)
    extra = "".join(f"{key} = {value}\n" for key, value in edge_keys.items())
    line = f'tls_listen = "{addresses["edge_tls"]}"\n'
    assert text.count(line) == 1
    return text.replace(line, line + extra), addresses


def metric(text: str, name: str) -> float:
    """A metric's value summed over its label sets, from Prometheus text."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))
