"""The aiohttp glue of the client connection limits (the policy is `edge.limits`).

`LimitedServer` is aiohttp's low-level server whose connection protocol counts itself
in and out of `ConnectionLimits`, answers 503 and closes when over the cap, stamps the
first byte of each request head and clears the stamp when aiohttp's parser has the
head, and answers a request the parser refused with a short 4xx body (aiohttp's own
echoes the offending bytes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError, HttpVersion10, HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from edge.limits import NO_HEAD, REFUSED_RESPONSE, ConnectionLimits
from runtime.http_errors import TerseRequestHandler

__all__ = ["LimitedServer"]

log = logging.getLogger("edgeshield.limits")

_HTTP_1 = (HttpVersion11, HttpVersion10)


class _LimitedHandler(TerseRequestHandler):
    """aiohttp's connection protocol with the cap, the head stamp and short 4xx bodies."""

    __slots__ = ("_last_payload", "_limits", "_refused", "head_since")

    def __init__(self, manager: web.Server, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._refused = False
        self._last_payload: Any = None
        self.head_since = NO_HEAD

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Over the cap: a 503 and a close, before aiohttp sees the connection."""
        if not self._limits.admit(self):
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            transport.write(REFUSED_RESPONSE)
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Count the connection out."""
        if self._refused:
            return
        self._limits.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Stamp the first byte of a head; clear the stamp when the parser has a head."""
        if self.head_since == NO_HEAD and (
            self._last_payload is None or self._last_payload.is_eof()
        ):
            # bytes while no request body is being read: the start of the next head
            self.head_since = self._loop.time()
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self.head_since = NO_HEAD
            messages = self._messages
            for index in range(
                max(0, len(messages) - (self._request_count - count)), len(messages)
            ):
                message = messages[index][0]
                if isinstance(message, RawRequestMessage) and message.version not in _HTTP_1:
                    messages[index] = (_version_answer(message), messages[index][1])
            if messages:
                self._last_payload = messages[-1][1]

    def close_for_head_timeout(self) -> None:
        """Close at once, answering nothing (a request never arrived)."""
        log.info("closing a connection from %s: its head took too long", self.peername)
        self.force_close()
        if self.transport is not None:
            self.transport.close()


def _version_answer(message: RawRequestMessage) -> _ErrInfo:
    """A head of another HTTP version than 1.0 and 1.1 (aiohttp's parser lets "HTTP/2.0"
    through, and would answer "HTTP/2.0 200" in HTTP/1 framing): 505 (RFC 9110
    15.6.6), answered as HTTP/1.0."""
    return _ErrInfo(
        status=505,
        exc=HttpProcessingError(code=505, message=f"HTTP version {message.version} in a head"),
        message="HTTP version not supported",
    )


class LimitedServer(web.Server):
    """aiohttp's low-level server whose connections obey `ConnectionLimits`."""

    def __init__(
        self,
        handler: Callable[[BaseRequest], Any],
        limits: ConnectionLimits,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        """A protocol for one new connection."""
        return _LimitedHandler(self, self.limits, loop=self._loop, **self._kwargs)
