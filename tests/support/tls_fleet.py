"""Throwaway certificates and TLS fleets for tests: trustme CAs, fleet.toml with TLS.

`TlsFiles` writes a CA and per-service certificates under a directory; `tls_fleet_toml`
renders a fleet whose edges have `tls_listen` (and, with `node_ca`, whose shields are
reached over TLS); `h2_get` and `tls_handshake` are small clients over real sockets.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import trustme

from tests.support.ports import free_port

SERVICE_HOSTS = {
    "alpha": ("www.alpha.test", "*.img.alpha.test"),
    "beta": ("www.beta.test",),
}


@dataclass
class PemPair:
    cert: Path
    key: Path


class TlsFiles:
    """A throwaway CA and the certificates a test fleet serves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_path = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))

    def issue(
        self,
        name: str,
        *identities: str,
        not_after: datetime.datetime | None = None,
    ) -> PemPair:
        """Write a certificate for `identities` as <name>.crt / <name>.key."""
        kwargs = {} if not_after is None else {"not_after": not_after}
        issued = self.ca.issue_cert(*identities, **kwargs)  # type: ignore[arg-type]
        pair = PemPair(self.root / f"{name}.crt", self.root / f"{name}.key")
        tmp_cert = pair.cert.with_suffix(".crt.tmp")
        tmp_key = pair.key.with_suffix(".key.tmp")
        tmp_cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        tmp_key.write_bytes(issued.private_key_pem.bytes())
        tmp_key.replace(pair.key)
        tmp_cert.replace(pair.cert)
        return pair

    def client_context(self, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
        """A client context trusting this CA."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.set_alpn_protocols(list(alpn))
        return context


def tls_fleet_toml(
    root: Path,
    files: TlsFiles,
    origin: str,
    *,
    shield: bool = False,
    node_ca: bool = False,
    extra_security: str = "",
) -> tuple[str, dict[str, str]]:
    """A fleet with services alpha and beta over TLS, one edge (and a shield).

    Returns the TOML text and the addresses: edge/edge_tls/edge_admin (and shield...)."""
    addresses = {
        "edge": f"127.0.0.1:{free_port()}",
        "edge_tls": f"127.0.0.1:{free_port()}",
        "edge_admin": f"127.0.0.1:{free_port()}",
    }
    lines = ['[[regions]]\nname = "eu"\nlatitude = 50.1\nlongitude = 8.7\n']
    for service, hosts in SERVICE_HOSTS.items():
        pair = files.issue(service, *hosts)
        host_list = ", ".join(f'"{h}"' for h in hosts if not h.startswith("*"))
        extra = ""
        if service == "alpha":
            host_list += ', "a.img.alpha.test"'
            # alpha is https only: plain HTTP is redirected, TLS answers carry HSTS
            extra = "https_redirect = true\nhsts_max_age = 600\n"
        lines.append(
            f'[[services]]\nname = "{service}"\nhosts = [{host_list}]\n'
            f'origins = ["{origin}"]\ntls_cert = "{pair.cert}"\ntls_key = "{pair.key}"\n{extra}'
        )
    if shield:
        addresses["shield"] = f"127.0.0.1:{free_port()}"
        addresses["shield_tls"] = f"127.0.0.1:{free_port()}"
        addresses["shield_admin"] = f"127.0.0.1:{free_port()}"
        pair = files.issue("shield1", "shield1", "127.0.0.1")
        lines.append(
            f'[[shields]]\nname = "shield1"\nregion = "eu"\nlisten = "{addresses["shield"]}"\n'
            f'admin_listen = "{addresses["shield_admin"]}"\ncache_dir = "{root / "shield1"}"\n'
            f'cache_size = "64MiB"\ntls_listen = "{addresses["shield_tls"]}"\n'
            f'tls_cert = "{pair.cert}"\ntls_key = "{pair.key}"\n'
        )
    lines.append(
        f'[[edges]]\nname = "edge1"\nregion = "eu"\nlisten = "{addresses["edge"]}"\n'
        f'admin_listen = "{addresses["edge_admin"]}"\ncache_dir = "{root / "edge1"}"\n'
        f'cache_size = "64MiB"\ntls_listen = "{addresses["edge_tls"]}"\n'
    )
    security = extra_security
    if node_ca:
        security += f'\nnode_ca = "{files.ca_path}"'
    if security:
        lines.append(f"[security]\n{security}\n")
    return "\n".join(lines), addresses


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def tls_handshake(
    address: str, server_name: str | None, context: ssl.SSLContext
) -> tuple[str, int]:
    """Handshake with `server_name` as SNI: the served certificate's subject and serial."""
    host, port = split(address)
    context = _copy_without_hostname_check(context) if server_name is None else context
    _reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=server_name or ""
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        from cryptography import x509

        certificate = x509.load_der_x509_certificate(der)
        return certificate.subject.rfc4514_string(), certificate.serial_number
    finally:
        writer.close()


def _copy_without_hostname_check(context: ssl.SSLContext) -> ssl.SSLContext:
    context.check_hostname = False
    return context


@dataclass
class H2Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    #: the 1xx heads that came before the final one
    informational: tuple[dict[str, str], ...] = ()


class H2Client:
    """A minimal HTTP/2 client over a real TLS socket (ALPN h2), for tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        self.goaway: h2.events.ConnectionTerminated | None = None

    @classmethod
    async def connect(cls, address: str, server_name: str, context: ssl.SSLContext) -> H2Client:
        host, port = split(address)
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=server_name
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        return cls(reader, writer)

    def request(self, authority: str, path: str, *, end: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [(":method", "GET"), (":scheme", "https"), (":authority", authority), (":path", path)],
            end_stream=end,
        )
        self.writer.write(self.conn.data_to_send())
        return stream_id

    async def events(self) -> list[h2.events.Event]:
        data = await self.reader.read(65536)
        if not data:
            raise ConnectionResetError("closed")
        events = self.conn.receive_data(data)
        self.writer.write(self.conn.data_to_send())
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        return events

    async def get(self, authority: str, path: str) -> H2Answer:
        stream_id = self.request(authority, path)
        headers: dict[str, str] = {}
        informational: list[dict[str, str]] = []
        body = bytearray()
        while True:
            for event in await self.events():
                if (
                    isinstance(event, h2.events.InformationalResponseReceived)
                    and event.stream_id == stream_id
                ):
                    informational.append({k.decode(): v.decode() for k, v in event.headers})
                elif isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    body += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    self.writer.write(self.conn.data_to_send())
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    status = int(headers[":status"])
                    return H2Answer(status, headers, bytes(body), tuple(informational))
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                    raise ConnectionResetError(f"stream reset: {event.error_code}")
            if self.goaway is not None:
                raise ConnectionResetError(f"GOAWAY {self.goaway.error_code}")

    def close(self) -> None:
        self.writer.close()
