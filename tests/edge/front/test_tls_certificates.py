"""TlsCertificates on a real TLS listener on 127.0.0.1: SNI, wildcards, reload.

The listener is `loop.create_server` with the certificates' listener context and a
protocol that only closes; each test handshakes with real client sockets and reads
which certificate it was shown.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.front.tls import CertificateSource, TlsCertificates
from edge.metrics import NodeMetrics
from tests.support.tls_fleet import TlsFiles, tls_handshake


class Listener:
    def __init__(self, files: TlsFiles, certificates: TlsCertificates, address: str) -> None:
        self.files = files
        self.certificates = certificates
        self.address = address

    async def subject(self, name: str | None) -> str:
        return (await tls_handshake(self.address, name, self.files.client_context()))[0]

    async def serial(self, name: str) -> int:
        return (await tls_handshake(self.address, name, self.files.client_context()))[1]


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    files = TlsFiles(tmp_path)
    one = files.issue("one", "www.one.test", "*.cdn.one.test")
    two = files.issue("two", "www.two.test")
    node = files.issue("node", "node1", "127.0.0.1")
    certificates = TlsCertificates(
        (
            CertificateSource("service one", str(one.cert), str(one.key), ("www.one.test",)),
            CertificateSource("service two", str(two.cert), str(two.key), ("www.two.test",)),
        ),
        node_name="node1",
        metrics=NodeMetrics("node1", "edge"),
    )
    assert certificates.reload() == []
    del node
    server = await asyncio.get_running_loop().create_server(
        asyncio.Protocol, "127.0.0.1", 0, ssl=certificates.listener_context()
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield Listener(files, certificates, f"127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()


async def test_each_name_gets_its_own_certificate(listener: Listener) -> None:
    one = await listener.subject("www.one.test")
    assert await listener.subject("WWW.ONE.TEST") == one
    trailing = listener.certificates.context_for("www.one.test.")
    assert trailing is listener.certificates.context_for("www.one.test")
    assert await listener.subject("a.cdn.one.test") == one
    assert await listener.subject("www.two.test") != one


async def test_unknown_names_and_no_name_are_refused_and_counted(listener: Listener) -> None:
    metrics = listener.certificates.metrics
    assert metrics is not None
    for name in ("www.three.test", "a.b.cdn.one.test", "cdn.one.test", None):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await listener.subject(name)
    assert metrics.tls_unrecognized_name.value == 4


async def test_reload_serves_new_files_and_keeps_the_old_on_a_bad_one(
    listener: Listener,
) -> None:
    before = await listener.serial("www.two.test")
    (listener.files.root / "two.key").write_text("not a key")
    failures = listener.certificates.reload(only_changed=True)
    assert len(failures) == 1 and "service two" in failures[0]
    assert await listener.serial("www.two.test") == before
    listener.files.issue("two", "www.two.test")
    assert listener.certificates.reload(only_changed=True) == []
    assert await listener.serial("www.two.test") != before
    metrics = listener.certificates.metrics
    assert metrics is not None
    assert (metrics.tls_reload_failures.value, metrics.tls_reloads.value) == (1, 1)


async def test_unchanged_files_are_not_read_again(listener: Listener) -> None:
    metrics = listener.certificates.metrics
    assert metrics is not None
    assert listener.certificates.reload(only_changed=True) == []
    assert metrics.tls_reloads.value == 0


async def test_the_node_certificate_answers_its_name_and_no_name(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path)
    node = files.issue("node", "node1", "127.0.0.1")
    certificates = TlsCertificates(
        (CertificateSource("node node1", str(node.cert), str(node.key), ()),), node_name="node1"
    )
    assert certificates.reload() == []
    assert certificates.context_for(None) is certificates.context_for("node1")
    assert certificates.context_for(None) is not None
    assert certificates.context_for("www.one.test") is None


def test_a_node_does_not_start_with_a_bad_certificate(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path)
    pair = files.issue("one", "www.one.test")
    os.remove(pair.key)
    certificates = TlsCertificates(
        (CertificateSource("service one", str(pair.cert), str(pair.key), ("www.one.test",)),),
        node_name="n",
    )
    failures = certificates.reload()
    assert failures and "cannot read the key" in failures[0]
    assert certificates.context_for("www.one.test") is None
