"""What a client sees when it asks for a name the node does not serve (RFC 6066 3).

The SNI callback (edge/front/tls.py) chooses the fatal alert `unrecognized_name`.
OpenSSL writes that alert into the connection's outgoing buffer, but asyncio's TLS
layer, and uvloop's (a port of it), close a server handshake that failed without
sending what that buffer holds: the client reads end-of-file in the middle of the
handshake, with no certificate shown. These tests pin both halves: with the same
listener context a blocking `ssl` socket does deliver the alert (the callback chose
it), and on either event loop the client gets the bare close instead. If a loop starts
flushing the alert, the second test fails and docs/security.md is to be updated.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from edge.front.tls import CertificateSource, TlsCertificates
from edge.metrics import NodeMetrics
from tests.support.tls_fleet import TlsFiles

pytestmark = pytest.mark.timeout(60)


def _certificates(tmp_path: Path) -> tuple[TlsFiles, TlsCertificates]:
    files = TlsFiles(tmp_path)
    one = files.issue("one", "www.one.test")
    certificates = TlsCertificates(
        (CertificateSource("service one", str(one.cert), str(one.key), ("www.one.test",)),),
        node_name="node1",
        metrics=NodeMetrics("node1", "edge"),
    )
    assert certificates.reload() == []
    return files, certificates


def _handshake(port: int, files: TlsFiles, name: str) -> ssl.SSLError:
    """Handshake asking for `name`; the error the client's OpenSSL reports."""
    context = files.client_context()
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=name):
                pass
        except ssl.SSLError as error:
            return error
    raise AssertionError("the handshake for an unknown name succeeded")


def test_the_sni_callback_chooses_unrecognized_name(tmp_path: Path) -> None:
    files, certificates = _certificates(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        # a failed handshake raises here, after OpenSSL has sent the alert
        with conn, contextlib.suppress(ssl.SSLError):
            certificates.listener_context().wrap_socket(conn, server_side=True)

    server = threading.Thread(target=serve)
    server.start()
    try:
        error = _handshake(port, files, "www.other.test")
    finally:
        server.join(10)
        listener.close()
    assert error.reason == "TLSV1_UNRECOGNIZED_NAME"


LOOPS: dict[str, Callable[[Coroutine[Any, Any, ssl.SSLError]], ssl.SSLError]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_on_an_event_loop_the_client_sees_the_handshake_closed_without_the_alert(
    tmp_path: Path, loop: str
) -> None:
    files, certificates = _certificates(tmp_path)

    async def attempt() -> ssl.SSLError:
        server = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, "127.0.0.1", 0, ssl=certificates.listener_context()
        )
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(_handshake, port, files, "www.other.test")
        finally:
            server.close()
            await server.wait_closed()

    error = LOOPS[loop](attempt())
    # end-of-file during the handshake: no alert, and no certificate was shown
    assert isinstance(error, ssl.SSLEOFError)
    assert certificates.metrics is not None
    assert certificates.metrics.tls_unrecognized_name.value == 1
