"""The fleet's TLS files checked: they exist, parse, match, cover their hosts, and last.

`edgeshield check` runs `check_tls` after the fleet file itself loaded: a certificate
or key that cannot be read, a key that is not the certificate's, a host of a TLS
service that its certificate does not cover, or a certificate already expired is an
error naming the table and key; a certificate that expires in under
`EXPIRY_WARNING_DAYS` days, and an origin that is not verified, are warnings. The
nodes use `read_pair` and `certificate_names` to build what they serve (edge/front/tls.py).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID

from fleet.config import ConfigError, Fleet, NodeConfig, Service, split_host_port

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "CertificatePair",
    "TlsFileError",
    "TlsReport",
    "certificate_names",
    "check_tls",
    "host_is_covered",
    "read_ca",
    "read_pair",
]

#: a certificate this close to its end is warned about (Let's Encrypt renews at 30
#: days left; 14 leaves two weeks to notice a renewal that failed)
EXPIRY_WARNING_DAYS = 14


class TlsFileError(Exception):
    """A certificate, key or CA file that cannot be used, and why (short, no contents)."""


@dataclass(frozen=True)
class CertificatePair:
    """A certificate chain and its key as read from PEM files."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes

    @property
    def leaf(self) -> x509.Certificate:
        """The server's own certificate (the first of the chain)."""
        return self.chain[0]


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read the {what} {path!r}: {exc.strerror or exc}") from None


def read_pair(cert_path: str, key_path: str) -> CertificatePair:
    """Read and check a certificate chain and its key; TlsFileError says what is wrong."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(_read(cert_path, "certificate")))
    except ValueError:
        raise TlsFileError(f"{cert_path!r} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(_read(key_path, "key"), password=None)
    except (ValueError, TypeError):
        raise TlsFileError(f"{key_path!r} is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(encoding, public) != key.public_key().public_bytes(
        encoding, public
    ):
        raise TlsFileError(f"the key {key_path!r} is not the key of the certificate {cert_path!r}")
    return CertificatePair(chain, key)


def read_ca(path: str) -> tuple[x509.Certificate, ...]:
    """Read a PEM CA bundle; TlsFileError when it cannot be used."""
    try:
        return tuple(x509.load_pem_x509_certificates(_read(path, "CA bundle")))
    except ValueError:
        raise TlsFileError(f"{path!r} is not a PEM CA bundle") from None


def certificate_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a certificate is for, lowercased: its SAN DNS names, or its
    subject CN when it has no SAN (RFC 6125 6.4.4)."""
    try:
        san = certificate.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        ).value
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in common)
    assert isinstance(san, x509.SubjectAlternativeName)
    names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    names += [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def host_is_covered(host: str, names: tuple[str, ...]) -> bool:
    """Whether a certificate with `names` is valid for `host`; a wildcard covers one
    whole left-most label only (RFC 6125 6.4.3)."""
    host = host.lower().rstrip(".")
    if host in names:
        return True
    _, dot, parent = host.partition(".")
    return bool(dot) and "." in parent and f"*.{parent}" in names


@dataclass
class TlsReport:
    """What `check_tls` found: errors (the fleet must not run) and warnings."""

    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def check_tls(fleet: Fleet, now: datetime.datetime | None = None) -> TlsReport:
    """Check every TLS file the fleet names (see the module's docstring)."""
    now = _now() if now is None else now
    report = TlsReport()
    for service in fleet.services:
        where = f"[[services]] ({service.name!r})"
        if service.has_tls:
            _check_pair(fleet, report, where, service.tls_cert, service.tls_key, now, service)
        if service.origin_ca:
            _check_ca(fleet, report, f"{where} key 'origin_ca'", service.origin_ca)
        if not service.origin_tls_verify and any(o.startswith("https:") for o in service.origins):
            report.warnings.append(
                f"{fleet.source}: {where} key 'origin_tls_verify': https origins are not "
                "verified: anyone on the path can impersonate them"
            )
    for table, nodes in (("[[shields]]", fleet.shields), ("[[edges]]", fleet.edges)):
        node: NodeConfig
        for node in nodes:
            if node.tls_cert:
                where = f"{table} ({node.name!r})"
                _check_pair(fleet, report, where, node.tls_cert, node.tls_key, now, node)
    if fleet.security.node_ca:
        _check_ca(fleet, report, "[security] key 'node_ca'", fleet.security.node_ca)
    return report


def _check_ca(fleet: Fleet, report: TlsReport, where: str, path: str) -> None:
    try:
        read_ca(path)
    except TlsFileError as exc:
        report.errors.append(ConfigError(fleet.source, where, str(exc)))


def _check_pair(
    fleet: Fleet,
    report: TlsReport,
    where: str,
    cert: str,
    key: str,
    now: datetime.datetime,
    owner: Service | NodeConfig,
) -> None:
    try:
        pair = read_pair(cert, key)
    except TlsFileError as exc:
        report.errors.append(ConfigError(fleet.source, f"{where} key 'tls_cert'", str(exc)))
        return
    names = certificate_names(pair.leaf)
    # edges reach a shield by the address of its tls_listen and verify that
    hosts = owner.hosts if isinstance(owner, Service) else (split_host_port(owner.tls_listen)[0],)
    for host in hosts:
        if not host_is_covered(host, names):
            report.errors.append(
                ConfigError(
                    fleet.source,
                    f"{where} key 'tls_cert'",
                    f"the certificate does not cover the host {host!r}",
                )
            )
    ends = pair.leaf.not_valid_after_utc
    if ends <= now:
        report.errors.append(
            ConfigError(
                fleet.source,
                f"{where} key 'tls_cert'",
                f"the certificate expired on {ends:%Y-%m-%d}",
            )
        )
    elif ends - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        report.warnings.append(
            f"{fleet.source}: {where} key 'tls_cert': the certificate expires on "
            f"{ends:%Y-%m-%d %H:%M} UTC, in under {EXPIRY_WARNING_DAYS} days"
        )
    if pair.leaf.not_valid_before_utc > now:
        report.errors.append(
            ConfigError(
                fleet.source,
                f"{where} key 'tls_cert'",
                f"the certificate is not valid before {pair.leaf.not_valid_before_utc:%Y-%m-%d}",
            )
        )
