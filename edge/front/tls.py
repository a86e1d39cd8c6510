"""TLS termination: the certificate chosen by SNI, reloaded without a restart.

One listener context (`TlsCertificates.listener_context`) takes every handshake; its
SNI callback moves the connection onto the context of the certificate that covers the
name the client asked for: a TLS service's hosts and its certificate's own names
(exact, or a wildcard for one label, RFC 6125 6.4.3), and the node's own name for the
node certificate a shield is verified by. An unknown or missing name ends the
handshake with the alert `unrecognized_name` (RFC 6066 3), counted in metrics, so one
customer's certificate is never shown for another's name; a handshake without SNI is
answered only by the node's own certificate (an edge reaching its shield by address),
and refused where the node has none.

Certificates are read again on `reload()` (SIGHUP) and when their files change
(`watch`); a source whose new files do not load keeps its old context, and the reason
is logged. Connections already open keep the context they were made with.

Session resumption: OpenSSL's stateless tickets (TLS 1.2) and TLS 1.3 tickets are on,
encrypted with a key each listener context draws at random (never on disk); the
listener takes a fresh context, so a new key, every few hours (edge/front/tls_listener.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from edge.metrics import NodeMetrics
from edge.store import io
from fleet.config import ConfigError, Fleet, NodeConfig
from fleet.tls import TlsFileError, certificate_names, read_pair
from runtime.tasks import cancel_and_wait

__all__ = ["CertificateSource", "TlsCertificates", "sources_of"]

log = logging.getLogger("edgeshield.tls")

#: how often the certificate files are looked at for changes (seconds)
WATCH_INTERVAL = 2.0

#: the key of the node certificate for a handshake without SNI
_NO_NAME = ""

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class CertificateSource:
    """A certificate and key to serve, and the names it is served for."""

    label: str
    cert: str
    key: str
    #: names from the fleet file (a service's hosts, the node's name); the
    #: certificate's own names are added when it is loaded
    names: tuple[str, ...]


def sources_of(fleet: Fleet, node: NodeConfig) -> tuple[CertificateSource, ...]:
    """What a node's TLS listener serves: every TLS service's certificate, and the
    node's own when it has one."""
    sources = [
        CertificateSource(f"service {s.name}", s.tls_cert, s.tls_key, s.hosts)
        for s in fleet.services
        if s.has_tls
    ]
    if node.tls_cert:
        sources.append(CertificateSource(f"node {node.name}", node.tls_cert, node.tls_key, ()))
    return tuple(sources)


@dataclass(frozen=True)
class _Loaded:
    context: ssl.SSLContext
    names: tuple[str, ...]
    stamp: tuple[tuple[int, int, int], ...]


def _stamp(source: CertificateSource) -> tuple[tuple[int, int, int], ...]:
    """What says a source's files changed: inode, size and mtime of each (zeros when
    a file cannot be read: a half-written renewal is looked at again next time)."""
    stamps = []
    for path in (source.cert, source.key):
        try:
            info = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0))
        else:
            stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(stamps)


class TlsCertificates:
    """A node's certificates by name, with the listener context that picks among them."""

    def __init__(
        self,
        sources: tuple[CertificateSource, ...],
        *,
        node_name: str,
        min_version: str = "1.2",
        alpn: tuple[str, ...] = ("h2", "http/1.1"),
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.sources = sources
        self.node_name = node_name.lower()
        self.min_version = _VERSIONS[min_version]
        self.alpn = list(alpn)
        self.metrics = metrics
        self._loaded: dict[CertificateSource, _Loaded] = {}
        self._by_name: dict[str, ssl.SSLContext] = {}
        self._listener: ssl.SSLContext | None = None
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    def for_node(
        cls, fleet: Fleet, node: NodeConfig, metrics: NodeMetrics | None = None
    ) -> TlsCertificates:
        """The certificates of `node`'s TLS listener, loaded (ConfigError naming what
        cannot be: a node does not start with a bad certificate)."""
        certificates = cls(
            sources_of(fleet, node),
            node_name=node.name,
            min_version=fleet.security.tls_min_version,
            alpn=fleet.security.alpn,
            metrics=metrics,
        )
        failures = certificates.reload()
        if failures:
            raise ConfigError(fleet.source, "tls_cert", "; ".join(failures))
        return certificates

    def _context(self, source: CertificateSource) -> ssl.SSLContext:
        """A server context for one certificate (the settings every context shares)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = self.min_version
        context.set_alpn_protocols(self.alpn)
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        if source.cert:
            context.load_cert_chain(source.cert, source.key)
        return context

    def _load(self, source: CertificateSource) -> _Loaded:
        stamp = _stamp(source)
        pair = read_pair(source.cert, source.key)
        try:
            context = self._context(source)
        except (ssl.SSLError, OSError) as exc:
            raise TlsFileError(f"{source.label}: {exc}") from None
        names = {*source.names, *certificate_names(pair.leaf)}
        if source.label.startswith("node "):
            names.update((self.node_name, _NO_NAME))
        return _Loaded(context, tuple(sorted(names)), stamp)

    def reload(self, *, only_changed: bool = False) -> list[str]:
        """Read every source's files again (blocking: run it off the event loop);
        a source that fails keeps what it had. Returns the failures' reasons."""
        failures: list[str] = []
        loaded = dict(self._loaded)
        changed = False
        for source in self.sources:
            previous = loaded.get(source)
            if only_changed and previous is not None and previous.stamp == _stamp(source):
                continue
            try:
                loaded[source] = self._load(source)
            except TlsFileError as exc:
                reason = f"{source.label}: {exc}"
                failures.append(reason)
                if previous is not None:
                    log.error("certificate not reloaded, the old one is kept: %s", reason)
                    # next look waits for another change of the files
                    loaded[source] = _Loaded(previous.context, previous.names, _stamp(source))
                if self.metrics is not None and self._loaded:
                    self.metrics.tls_reload_failures.inc()
                continue
            changed = True
        if changed:
            by_name: dict[str, ssl.SSLContext] = {}
            # a service's hosts first: never another source's context for them
            for source in self.sources:
                entry = loaded.get(source)
                if entry is not None:
                    for name in entry.names:
                        by_name.setdefault(name, entry.context)
            was_loaded = bool(self._loaded)
            self._loaded = loaded
            self._by_name = by_name
            if was_loaded:
                log.info("certificates reloaded")
                if self.metrics is not None:
                    self.metrics.tls_reloads.inc()
        return failures

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context whose certificate serves `server_name` (None: refuse)."""
        if not server_name:
            # a client that connects by address (an edge reaching its shield) sends
            # no name: only the node's own certificate may answer it
            return self._by_name.get(_NO_NAME)
        name = server_name.lower().rstrip(".")
        by_name = self._by_name
        context = by_name.get(name)
        if context is None:
            _, dot, parent = name.partition(".")
            if dot and "." in parent:
                context = by_name.get(f"*.{parent}")
        return context

    def _sni(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        context = self.context_for(server_name)
        if context is None:
            if self.metrics is not None:
                self.metrics.tls_unrecognized_name.inc()
            # RFC 6066 3: a server that does not recognise the name sends the fatal
            # alert unrecognized_name rather than another name's certificate
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = context
        return None

    def listener_context(self, *, fresh: bool = False) -> ssl.SSLContext:
        """The context a TLS listener is created with (the same one, unless `fresh`:
        a new one, whose session tickets are under a new random key)."""
        if self._listener is None or fresh:
            # no certificate of its own: every handshake is moved onto one by SNI
            context = self._context(CertificateSource("listener", "", "", ()))
            context.sni_callback = self._sni
            self._listener = context
        return self._listener

    async def reload_now(self) -> list[str]:
        """`reload()` off the event loop (what SIGHUP runs)."""
        return await io.run(self.reload)

    async def _watch_files(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await io.run(lambda: self.reload(only_changed=True))
            except Exception:  # pragma: no cover - a failure here must not end the watch
                log.exception("looking for new certificates failed")

    def start(self, interval: float = WATCH_INTERVAL) -> None:
        """Start watching the files for changes."""
        if self._watch is None and self.sources:
            self._watch = asyncio.get_running_loop().create_task(self._watch_files(interval))

    async def stop(self) -> None:
        """Stop watching."""
        if self._watch is not None:
            await cancel_and_wait(self._watch)
            self._watch = None

    def on_reload_signal(self) -> Callable[[], None]:
        """A callback for `loop.add_signal_handler(SIGHUP, ...)`: reload in the background."""

        def reload() -> None:
            task = asyncio.get_running_loop().create_task(self.reload_now())
            task.add_done_callback(_log_reload)

        return reload


def _log_reload(task: asyncio.Task[list[str]]) -> None:
    if not task.cancelled() and task.exception() is not None:  # pragma: no cover
        log.error("certificate reload failed: %s", task.exception())
