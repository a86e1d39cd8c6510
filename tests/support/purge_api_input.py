"""A purge API process for hostile-input tests, and a raw-bytes HTTP exchange with it.

`running_purge_api` starts `edgeshield purge-api` with a rate limit no test reaches,
on a fleet that names one edge (`edge1`, never started: purges stay pending, and the
node protocol has a node to ask for), and stops it.
`raw_exchange` sends bytes a well-behaved client library would refuse to send (bytes
that are not UTF-8 in a header, say) and reads one answer back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.config import Fleet
from tests.purge_api.harness import start_api, write_fleet
from tests.support.fleetfile import TEST_TOKEN
from tests.support.processes import NodeProcess

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
PURGE_PATH = "/v1/services/site/purge"


@dataclass
class PurgeApi:
    """A running purge API: its fleet, base URL and process."""

    fleet: Fleet
    url: str
    process: NodeProcess

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the API."""
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        return host, int(port)


def running_purge_api(root: Path) -> Iterator[PurgeApi]:
    """Generator for a pytest fixture: a started purge API, stopped afterwards."""
    fleet = write_fleet(
        root, shields=0, edges=1, purge_api_extra="rate_limit_per_minute = 10000000"
    )
    started: list[NodeProcess] = []
    try:
        process = start_api(fleet, root, started)
        assert fleet.purge_api is not None
        yield PurgeApi(fleet, fleet.purge_api.url, process)
    finally:
        for process in started:
            process.stop()


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, head fields (lowercase names), body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


async def raw_exchange(address: tuple[str, int], request: bytes, timeout: float = 20.0) -> Answer:
    """Send `request` as is on a new connection; read one answer (Content-Length framed).

    An answer with no Content-Length is read to the close; a close with no answer
    raises ConnectionError.
    """
    reader, writer = await asyncio.open_connection(*address)
    try:
        async with asyncio.timeout(timeout):
            writer.write(request)
            await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                raise ConnectionError(f"closed without an answer ({exc.partial[:80]!r})") from None
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise AssertionError(f"not an HTTP status line: {lines[0][:100]!r}")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, sep, value = line.partition(":")
                    assert sep, f"not a header line: {line[:100]!r}"
                    headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            else:
                body = await reader.read()
        return Answer(int(parts[1]), headers, body)
    finally:
        writer.close()


def post(
    body: bytes,
    *,
    path: str = PURGE_PATH,
    headers: dict[str, str] | None = None,
    raw_headers: bytes = b"",
) -> bytes:
    """A POST with `body` (Content-Length framed), the token, and any extra fields."""
    fields = {"Host": "api", **AUTH, "Content-Length": str(len(body)), **(headers or {})}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode()
    return (
        f"POST {path} HTTP/1.1\r\n".encode()
        + head
        + raw_headers
        + b"Connection: close\r\n\r\n"
        + body
    )
