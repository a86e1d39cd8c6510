"""An origin that sends informational responses the way a hostile one would, for the
conformance adversarial tests: a raw asyncio TCP server on 127.0.0.1, in a thread.

- `/hints-flood...`: `FLOOD` 103 Early Hints, each with a Link and a field its own
  Connection names (hop-by-hop, never to be passed on), then a cacheable 200
- anything else: a small cacheable 200 naming its path
"""

from __future__ import annotations

import asyncio

from tests.support.raw_origin import RawOrigin

#: 103s sent before the final answer of a `/hints-flood...` path
FLOOD = 2000


class HintsOrigin(RawOrigin):
    """The origin above, started and stopped by the test."""

    async def answer(self, path: str, writer: asyncio.StreamWriter) -> None:
        """A flood of 103s first for `/hints-flood...`, then a small cacheable 200."""
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
