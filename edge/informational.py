"""1xx responses of the next tier, forwarded to the client (RFC 9110 15.2).

aiohttp's client reads and drops informational responses before the final one. Its
response class here (`InformationalClientResponse`, the upstream session's) looks at
each message as the client reads it and hands a forwardable 1xx (103 Early Hints,
102; `edge.cache.hints.forwardable_informational`) to the relay of the request the
fetch runs for: `relay_informational_to`, set by the engine per request, is a
context variable, so a fill task started for that request inherits it. Nothing of a
1xx is stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from typing import Any

import aiohttp
from multidict import CIMultiDict

from edge.cache.fields import upstream_header_pairs
from edge.cache.hints import forwardable_informational

Relay = Callable[[int, CIMultiDict[str]], None]

#: The most fields of one 1xx passed on (its size is bounded by the client's parser).
MAX_FIELDS = 32
#: The most 1xx passed on per upstream answer: a hostile upstream's endless stream of
#: them is read and dropped past this, never queued for a slow client
MAX_INFORMATIONAL = 8

_relay: ContextVar[Relay | None] = ContextVar("edgeshield_informational_relay", default=None)


def current_relay() -> Relay | None:
    """Where 1xx responses of a fetch made now go (None: nowhere); a client other
    than aiohttp's (edge.upstream_client) reads it when it sends."""
    return _relay.get()


def relay_informational_to(relay: Relay | None) -> Token[Relay | None]:
    """Forward the 1xx responses of upstream fetches made from this context (and the
    tasks it starts) to `relay`; None stops forwarding."""
    return _relay.set(relay)


class InformationalClientResponse(aiohttp.ClientResponse):
    """aiohttp's client response, passing each forwardable 1xx to the current relay."""

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        """Read the response head, relaying the 1xx heads read before it."""
        relay = _relay.get()
        protocol = getattr(connection, "protocol", None)
        if relay is None or protocol is None:
            return await super().start(connection)
        read: Callable[[], Awaitable[Any]] = protocol.read
        relayed = 0

        async def relaying_read() -> Any:
            nonlocal relayed
            message, payload = await read()
            if forwardable_informational(message.code) and relayed < MAX_INFORMATIONAL:
                relayed += 1
                pairs = upstream_header_pairs(tuple(message.headers.items()))[:MAX_FIELDS]
                relay(message.code, CIMultiDict(pairs))
            return message, payload

        protocol.read = relaying_read
        try:
            return await super().start(connection)
        finally:
            del protocol.read
