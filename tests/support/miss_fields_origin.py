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

from tests.support.raw_origin import RawOrigin

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


class MissFieldsOrigin(RawOrigin):
    """The origin above, started and stopped by the test."""

    async def answer(self, path: str, writer: asyncio.StreamWriter) -> None:
        """A small cacheable 200 naming `path`, with the fields of its prefix."""
        fields = next((value for prefix, value in FIELDS.items() if path.startswith(prefix)), b"")
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
