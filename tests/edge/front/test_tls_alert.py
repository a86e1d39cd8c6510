"""What a client sees when it asks for a name the node does not serve (RFC 6066 3).

The SNI callback (edge/front/tls.py) chooses the fatal alert `unrecognized_name`.
OpenSSL writes that alert into the connection's outgoing buffer, but asyncio's TLS
layer, and uvloop's (a port of it), close a server handshake that failed without
sending what that buffer holds: the client reads end-of-file in the middle of the
handshake. That is why the TLS listener (edge/front/tls_listener.py) reads the
ClientHello itself and writes the alert before TLS starts. These tests pin all three:
a blocking `ssl` socket with the listener context delivers the alert (the callback
chose it); a loop's own TLS server drops it (if a loop starts flushing it, that test
fails and docs/security.md is to be updated: the peek would no longer be needed for
the alert); and the listener, on either loop, delivers it.
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
from edge.front.tls_listener import TlsListener
from edge.metrics import NodeMetrics
from tests.support.sni import UNRECOGNIZED_NAME_ALERT, client_hello, raw_exchange
from tests.support.tls_fleet import TlsFiles, tls_handshake

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
def test_a_loops_own_tls_server_closes_the_handshake_without_the_alert(
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


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_the_listener_sends_the_alert_for_an_unknown_or_missing_name(
    tmp_path: Path, loop: str
) -> None:
    files, certificates = _certificates(tmp_path)

    async def attempt() -> ssl.SSLError:
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        listener = await TlsListener.open(asyncio.Protocol, sock, certificates)
        try:
            # a raw hello gets exactly the alert record, then the close
            answer, _ = await raw_exchange(f"127.0.0.1:{port}", client_hello("www.other.test"))
            assert answer == UNRECOGNIZED_NAME_ALERT
            answer, _ = await raw_exchange(f"127.0.0.1:{port}", client_hello(None))
            assert answer == UNRECOGNIZED_NAME_ALERT
            # a name the node serves still gets its certificate (the client checks the
            # certificate is valid for that name)
            _, serial = await tls_handshake(
                f"127.0.0.1:{port}", "www.one.test", files.client_context()
            )
            assert serial > 0
            return await asyncio.to_thread(_handshake, port, files, "www.other.test")
        finally:
            await listener.close()

    error = LOOPS[loop](attempt())
    assert error.reason == "TLSV1_UNRECOGNIZED_NAME"
    assert certificates.metrics is not None
    assert certificates.metrics.tls_unrecognized_name.value == 3
