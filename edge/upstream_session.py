"""The client session to the next tier and the one send that picks its client.

`make_session` builds aiohttp's session (connection reuse checked, 1xx relayed) with
a lean client (`edge.upstream_client`) on its connector, closed with it; `send`
hands a bodiless GET or HEAD to a plain-http peer to the lean client and anything
else (bodies, https) to aiohttp. Both raise `_ConnectFailure` when the request
cannot have reached the peer (safe to retry elsewhere) and `UpstreamError` after.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Coroutine

import aiohttp

from edge.informational import InformationalClientResponse
from edge.upstream_client import LEAN_METHODS, UpstreamClient
from edge.upstream_wire import UpstreamResponse, _Request, _ReuseCheckingConnector, _send

__all__ = ["make_session", "send"]


def _leanable(request: _Request) -> bool:
    """Whether the lean client sends this request: bodiless GET or HEAD with a target
    it can put on the wire as it is (anything else goes through aiohttp)."""
    target = request.target
    return (
        request.body is None
        and request.method in LEAN_METHODS
        and target.startswith("/")
        and target.isascii()
        and target.isprintable()
        and " " not in target
    )


def send(
    session: aiohttp.ClientSession,
    base_url: str,
    request: _Request,
    peer: str,
    on_done: Callable[[], None],
) -> Coroutine[object, object, UpstreamResponse]:
    """One attempt at `request` on `base_url`, to await: the lean client where it can,
    else aiohttp; raises _ConnectFailure (safe to retry elsewhere) or UpstreamError.
    The client's own coroutine, not one awaiting it: a layer that only passed the
    answer through was one more frame to resume at each of the fill's steps."""
    connector = session.connector
    client = connector.lean if isinstance(connector, _ReuseCheckingConnector) else None
    if isinstance(client, UpstreamClient) and not client.closed and _leanable(request):
        address = client.peer(base_url)
        if address is not None:
            return client.request(base_url, address, request, peer, on_done)
    return _send(session, base_url, request, peer, on_done)


def make_session(
    connect_timeout: float = 2.0, read_timeout: float = 30.0, tls: ssl.SSLContext | bool = True
) -> aiohttp.ClientSession:
    """A keep-alive client session for talking to the next tier (`tls`: how https
    peers are verified; see edge/upstream_tls.py), with its lean client."""
    connector = _ReuseCheckingConnector(
        ssl=tls,
        limit=0,
        limit_per_host=0,
        keepalive_timeout=30,
        enable_cleanup_closed=True,
        ttl_dns_cache=300,
    )
    connector.lean = UpstreamClient(connect_timeout, read_timeout)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout, sock_read=read_timeout
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        # 1xx heads (103 Early Hints) are passed on to the client (edge.informational)
        response_class=InformationalClientResponse,
    )
