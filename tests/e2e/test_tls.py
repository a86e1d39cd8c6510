"""TLS on a real edge process: certificates by SNI, h2 and HTTP/1.1, reload, abuse.

One edge (services alpha and beta, each with its own certificate from a throwaway CA)
is started for the module; each test talks to it over real TLS sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import h2.errors
import h2.events
import pytest

from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.tls_fleet import H2Client, TlsFiles, tls_fleet_toml, tls_handshake
from tests.support.waiting import eventually


class TlsEdge:
    def __init__(self, root: Path, origin: OriginServer) -> None:
        self.files = TlsFiles(root / "tls")
        text, self.addresses = tls_fleet_toml(root, self.files, origin.url)
        self.path = root / "fleet.toml"
        self.path.write_text(text)
        self.process = NodeProcess(
            ["edge", "--config", str(self.path), "--node", "edge1"], root / "edge1.log"
        )

    def start(self) -> TlsEdge:
        self.process.start()
        for key in ("edge", "edge_tls", "edge_admin"):
            self.process.wait_listening(self.addresses[key])
        return self

    @property
    def tls(self) -> str:
        return self.addresses["edge_tls"]

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def url(self, path: str) -> str:
        return f"https://{self.tls}{path}"

    async def metric(self, name: str) -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://{self.addresses['edge_admin']}/metrics",
                headers={"Authorization": "Bearer test-node-secret"},
            ) as response,
        ):
            text = await response.text()
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    yield from running_origin()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, origin: OriginServer) -> Iterator[TlsEdge]:
    node = TlsEdge(tmp_path_factory.mktemp("tls-edge"), origin)
    try:
        yield node.start()
    finally:
        node.process.stop()


async def https_get(
    edge: TlsEdge, host: str, path: str, context: ssl.SSLContext
) -> tuple[int, dict[str, str], bytes]:
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    # the TCP connection goes to the edge's TLS address; SNI and Host are `host`
    async with (
        aiohttp.ClientSession(connector=connector, auto_decompress=False) as session,
        session.get(edge.url(path), headers={"Host": host}, server_hostname=host) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def test_sni_picks_each_services_certificate(edge: TlsEdge) -> None:
    context = edge.files.client_context()
    alpha, _ = await tls_handshake(edge.tls, "www.alpha.test", context)
    beta, _ = await tls_handshake(edge.tls, "www.beta.test", context)
    wildcard, _ = await tls_handshake(edge.tls, "a.img.alpha.test", context)
    assert alpha == wildcard
    assert alpha != beta


async def test_unknown_or_missing_sni_is_refused_and_counted(edge: TlsEdge) -> None:
    before = await edge.metric("edgeshield_tls_unrecognized_name_total")
    context = edge.files.client_context()
    context.check_hostname = False
    for name in ("www.other.test", None):
        # the handshake ends before any certificate is shown, with the alert
        # unrecognized_name (tests/security/test_tls_sni.py reads it exactly)
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await tls_handshake(edge.tls, name, context)
    await eventually(
        lambda: _at_least(edge, "edgeshield_tls_unrecognized_name_total", before + 2),
        "unrecognized_name counted",
    )


async def _at_least(edge: TlsEdge, name: str, value: float) -> bool:
    return await edge.metric(name) >= value


async def test_h2_and_http11_both_negotiated_and_both_hit_the_cache(
    edge: TlsEdge, origin: OriginServer
) -> None:
    origin.route("/both", headers={"Cache-Control": "max-age=300"}, body=b"same for both")
    status, headers, body = await https_get(
        edge, "www.alpha.test", "/both", edge.files.client_context(("http/1.1",))
    )
    assert (status, body) == (200, b"same for both")
    client = await H2Client.connect(edge.tls, "www.alpha.test", edge.files.client_context(("h2",)))
    try:
        answer = await client.get("www.alpha.test", "/both")
        again = await client.get("www.alpha.test", "/both")
    finally:
        client.close()
    assert (answer.status, answer.body) == (200, b"same for both")
    assert "hit" in answer.headers["cache-status"]
    assert answer.headers["cache-status"].endswith("proto=h2")
    assert "hit" in again.headers["cache-status"]
    status, headers, _ = await https_get(
        edge, "www.alpha.test", "/both", edge.files.client_context(("http/1.1",))
    )
    assert "hit" in headers["Cache-Status"]
    assert origin.count("/both") == 1


async def test_origin_is_told_the_client_came_over_https(
    edge: TlsEdge, origin: OriginServer
) -> None:
    origin.route("/proto", headers={"Cache-Control": "no-store"}, body=b"p")
    client = await H2Client.connect(edge.tls, "www.beta.test", edge.files.client_context(("h2",)))
    try:
        await client.get("www.beta.test", "/proto")
    finally:
        client.close()
    seen = origin.seen_headers[-1]
    assert {k.lower(): v for k, v in seen.items()}["x-forwarded-proto"] == "https"


async def test_slow_h2_reader_keeps_memory_flat(edge: TlsEdge, origin: OriginServer) -> None:
    size = 8 * 1024 * 1024
    origin.route("/big", headers={"Cache-Control": "max-age=300"}, size=size)
    status, _, body = await https_get(
        edge, "www.alpha.test", "/big", edge.files.client_context(("http/1.1",))
    )
    assert status == 200 and len(body) == size
    # a hit: the object is now where hits come from (the store, its memory tier)
    status, _, body = await https_get(
        edge, "www.alpha.test", "/big", edge.files.client_context(("http/1.1",))
    )
    assert status == 200 and len(body) == size
    before = edge.rss_kib()
    client = await H2Client.connect(edge.tls, "www.alpha.test", edge.files.client_context(("h2",)))
    try:
        # 20 streams of 8 MiB each, never read past their first window: the
        # connection's window is given back, the streams' never are
        streams = [client.request("www.alpha.test", "/big") for _ in range(20)]
        received = 0
        while received < len(streams) * 65535:
            for event in await client.events():
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
                    client.conn.increment_flow_control_window(event.flow_controlled_length)
                    client.writer.write(client.conn.data_to_send())
        after = edge.rss_kib()
    finally:
        client.close()
    # of the 160 MiB asked for, each stream holds what its writer has queued (a store
    # chunk of 1 MiB, the high-water mark, a read ahead): a bound per stream, not the body
    assert after - before < 20 * 3 * 1024, (before, after)


async def test_rapid_reset_flood_gets_goaway_while_others_are_served(
    edge: TlsEdge, origin: OriginServer
) -> None:
    origin.route("/calm", headers={"Cache-Control": "max-age=300"}, body=b"calm")
    context = edge.files.client_context(("h2",))
    calm = await H2Client.connect(edge.tls, "www.beta.test", context)
    flood = await H2Client.connect(edge.tls, "www.alpha.test", context)
    served = 0
    try:
        for _ in range(400):
            stream_id = flood.request("www.alpha.test", "/calm")
            flood.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            flood.writer.write(flood.conn.data_to_send())
        with contextlib.suppress(ConnectionResetError):
            while flood.goaway is None:
                await flood.events()
        assert flood.goaway is not None
        assert flood.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        for _ in range(20):
            answer = await calm.get("www.beta.test", "/calm")
            assert answer.status == 200
            served += 1
    finally:
        calm.close()
        flood.close()
    assert served == 20
    assert await edge.metric("edgeshield_h2_goaways_total") >= 1


async def test_sighup_serves_a_new_certificate_without_failing_a_request(
    edge: TlsEdge, origin: OriginServer
) -> None:
    origin.route("/load", headers={"Cache-Control": "max-age=300"}, body=b"load")
    context = edge.files.client_context()
    pid = edge.pid
    _, serial = await tls_handshake(edge.tls, "www.beta.test", context)
    failures: list[BaseException] = []
    done = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                status, _, body = await https_get(
                    edge, "www.beta.test", "/load", edge.files.client_context()
                )
                assert (status, body) == (200, b"load")
                done += 1
            except Exception as exc:
                failures.append(exc)

    workers = [asyncio.create_task(load()) for _ in range(4)]
    try:
        await eventually(lambda: done >= 10, "load running")
        # a bad file first: the old certificate stays
        edge.files.root.joinpath("beta.crt").write_text("not a certificate")
        os.kill(pid, signal.SIGHUP)
        await eventually(
            lambda: _at_least(edge, "edgeshield_tls_reload_failures_total", 1), "bad file refused"
        )
        _, still = await tls_handshake(edge.tls, "www.beta.test", context)
        assert still == serial
        edge.files.issue("beta", "www.beta.test")
        os.kill(pid, signal.SIGHUP)

        async def new_serial() -> bool:
            return (await tls_handshake(edge.tls, "www.beta.test", context))[1] != serial

        await eventually(new_serial, "the new certificate served")
        started = done
        await eventually(lambda: done >= started + 10, "load after the reload")
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert failures == []
    assert edge.pid == pid and edge.process.proc is not None
    assert edge.process.proc.poll() is None


async def test_edge_reaches_its_shield_over_tls_verified_by_node_ca(
    tmp_path: Path, origin: OriginServer, processes: list[NodeProcess]
) -> None:
    files = TlsFiles(tmp_path / "tls")
    text, addresses = tls_fleet_toml(tmp_path, files, origin.url, shield=True, node_ca=True)
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    shield = NodeProcess(
        ["shield", "--config", str(path), "--node", "shield1"], tmp_path / "shield1.log"
    ).start()
    processes.append(shield)
    for key in ("shield", "shield_tls", "shield_admin"):
        shield.wait_listening(addresses[key])
    edge = NodeProcess(["edge", "--config", str(path), "--node", "edge1"], tmp_path / "edge1.log")
    processes.append(edge.start())
    edge.wait_listening(addresses["edge"])
    origin.route("/tiered", headers={"Cache-Control": "max-age=300"}, body=b"via shield")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://{addresses['edge']}/tiered", headers={"Host": "www.beta.test"}
        ) as response,
    ):
        assert response.status == 200
        assert await response.read() == b"via shield"
        assert response.headers["Cache-Status"].startswith("shield1; fwd=uri-miss")
    # the shield's access log names how the edge reached it
    await eventually(
        lambda: '"target":"/tiered"' in shield.log() and '"proto":"https/1.1"' in shield.log(),
        "the shield logged the edge's request over TLS",
    )


async def test_plain_http_is_redirected_and_tls_answers_carry_hsts(
    edge: TlsEdge, origin: OriginServer
) -> None:
    origin.route("/secure", headers={"Cache-Control": "max-age=300"}, body=b"s")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://{edge.addresses['edge']}/secure?a=1",
            headers={"Host": "www.alpha.test"},
            allow_redirects=False,
        ) as response,
    ):
        assert response.status == 308
        assert response.headers["Location"] == "https://www.alpha.test/secure?a=1"
        assert "Strict-Transport-Security" not in response.headers
    status, headers, _ = await https_get(
        edge, "www.alpha.test", "/secure", edge.files.client_context()
    )
    assert status == 200 and headers["Strict-Transport-Security"] == "max-age=600"
    client = await H2Client.connect(edge.tls, "www.alpha.test", edge.files.client_context(("h2",)))
    try:
        answer = await client.get("www.alpha.test", "/secure")
    finally:
        client.close()
    assert answer.headers["strict-transport-security"] == "max-age=600"
    # a service without the keys: neither
    status, headers, _ = await https_get(
        edge, "www.beta.test", "/secure", edge.files.client_context()
    )
    assert "Strict-Transport-Security" not in headers
    assert origin.count("/secure") == 2


def test_a_node_with_an_unreadable_certificate_does_not_start(
    tmp_path: Path, origin: OriginServer
) -> None:
    node = TlsEdge(tmp_path, origin)
    (node.files.root / "beta.key").unlink()
    node.process.start()
    assert node.process.proc is not None
    assert node.process.proc.wait(30) == 2
    assert "service beta" in node.process.log()
    assert "cannot read the key" in node.process.log()
