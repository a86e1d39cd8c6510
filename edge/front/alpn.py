"""After a TLS handshake, the protocol ALPN chose takes the connection.

A TLS listener's protocol factory is `AlpnDispatch.factory(h2, http1)`: the TLS layer
completes the handshake first and only then calls `connection_made`, when the
negotiated protocol is known (RFC 7301 3.2); the dispatch then makes the chosen
protocol with its factory, hands it the transport (`set_protocol`) and steps aside,
so every later byte goes straight to that protocol. `h2` gets HTTP/2; anything else
(no ALPN, or "http/1.1") gets the HTTP/1.1 front, whose factory is whatever the node
passes: any `asyncio.Protocol` factory works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["AlpnDispatch", "ProtocolFactory", "negotiated"]

#: a protocol factory, as `loop.create_server` takes
ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def negotiated(transport: asyncio.BaseTransport) -> str | None:
    """The ALPN protocol of a TLS transport (None: none was negotiated)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    protocol: str | None = ssl_object.selected_alpn_protocol()
    return protocol


class AlpnDispatch(asyncio.Protocol):
    """The first protocol of a TLS connection: hands it to h2 or HTTP/1.1."""

    __slots__ = ("_h2", "_http1", "inner")

    def __init__(self, h2: ProtocolFactory, http1: ProtocolFactory) -> None:
        self._h2 = h2
        self._http1 = http1
        self.inner: asyncio.BaseProtocol | None = None

    @classmethod
    def factory(cls, h2: ProtocolFactory, http1: ProtocolFactory) -> Callable[[], AlpnDispatch]:
        """The protocol factory of a TLS listener."""
        return lambda: cls(h2, http1)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The handshake is done: make the negotiated protocol and give it the transport."""
        inner = self._h2() if negotiated(transport) == "h2" else self._http1()
        self.inner = inner
        transport.set_protocol(inner)
        inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Only reached if the connection ends before the inner protocol took it."""
        if self.inner is not None:
            self.inner.connection_lost(exc)
