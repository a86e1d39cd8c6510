"""Short answers to requests aiohttp's parser refuses, for every HTTP server we run.

aiohttp answers a head it cannot parse with a body that quotes the offending input (up
to 8 KiB of it) and logs a traceback at ERROR level. A server facing the internet says
only the status, and logs one short line. The traffic listeners of edges and shields
(`edge.front.aiohttp_adapter`), the purge API and the geo HTTP API all use this handler.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

log = logging.getLogger("edgeshield.http")


def status_line_body(status: int) -> str:
    """The whole body of an error we answer: the status and its phrase."""
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "bad request"
    return f"{status} {phrase}\n"


class TerseRequestHandler(RequestHandler):
    """aiohttp's connection protocol, answering parser errors with a short body."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """A 4xx/5xx found before any handler ran: the status only, never the input."""
        if status == 500:
            return super().handle_error(request, status, exc, message)
        log.info("bad request from %s: %d %.200s", request.remote, status, exc or message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send an error")
        response = web.Response(status=status, text=status_line_body(status))
        response.force_close()
        return response


class TerseServer(web.Server):
    """aiohttp's low-level server whose connections use `TerseRequestHandler`."""

    def __call__(self) -> RequestHandler:
        """A protocol for one new connection."""
        return TerseRequestHandler(self, loop=self._loop, **self._kwargs)


class TerseAppRunner(web.AppRunner):
    """An `AppRunner` for an `Application` whose connections answer parse errors tersely."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # the application's server is built inside aiohttp; only its protocol factory
        # differs, and TerseServer adds no state, so it takes the class over as is
        server.__class__ = TerseServer
        return server
