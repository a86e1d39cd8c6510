"""Session resumption on a real TLS listener, and the ticket key replaced by rotate()."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

from edge.front.tls import CertificateSource, TlsCertificates
from edge.front.tls_listener import TlsListener
from tests.support.tls_fleet import TlsFiles

NAME = "www.one.test"


def handshake(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname=NAME, session=session)


def connect_twice(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None):
    """(resumed with `session`?, a new session)."""
    with handshake(port, context, session) as sock:
        return sock.session_reused, sock.session


async def test_sessions_resume_until_the_ticket_key_is_replaced(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path)
    pair = files.issue("one", NAME)
    certificates = TlsCertificates(
        (CertificateSource("service one", str(pair.cert), str(pair.key), (NAME,)),),
        node_name="n",
    )
    assert certificates.reload() == []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    listener = await TlsListener.open(asyncio.Protocol, sock, certificates)
    context = files.client_context()
    # TLS 1.2: the ticket arrives within the handshake, so the session is whole at once
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        reused, session = await asyncio.to_thread(connect_twice, port, context, None)
        assert not reused
        reused, _ = await asyncio.to_thread(connect_twice, port, context, session)
        assert reused
        await listener.rotate()
        reused, fresh = await asyncio.to_thread(connect_twice, port, context, session)
        assert not reused
        reused, _ = await asyncio.to_thread(connect_twice, port, context, fresh)
        assert reused
    finally:
        await listener.close()
