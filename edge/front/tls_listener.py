"""A node's TLS listener: the ClientHello read first, certificates by SNI, then h2 or
HTTP/1.1 by ALPN.

`start_tls_listener` opens `tls_listen` (SO_REUSEPORT, shared by the node's workers
like the plain listener), loads the certificates (edge/front/tls.py), reloads them when
their files change (and on SIGHUP: the node's handler calls `on_reload_signal`),
replaces the session-ticket key every `TICKET_KEY_LIFETIME`, and hands each
connection, once its handshake is done, to HTTP/2 (edge/front/h2_protocol.py) or
to the HTTP/1.1 front whose factory the node passes (`http1`).

The listener accepts connections itself and reads each client's ClientHello before
TLS starts, without consuming it (`recv(..., MSG_PEEK)`; edge/front/client_hello.py
parses it): a name no certificate serves gets the alert `unrecognized_name` (RFC 6066
3) written by us and a close, since asyncio's and uvloop's TLS layers drop the alert
OpenSSL chooses; anything else is handed, its bytes untouched, to the loop's TLS layer
(`connect_accepted_socket`). While a hello is incomplete the socket's receive low-water
mark (SO_RCVLOWAT) is set to the bytes the parser still needs, so the loop wakes once
when they are all there rather than at every segment; docs/security.md says why this
design and not a memory BIO.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edge.accesslog import AccessLog
from edge.front.alpn import AlpnDispatch, ProtocolFactory
from edge.front.client_hello import (
    DECODE_ERROR,
    HANDSHAKE_RECORD,
    MAX_HELLO_BYTES,
    UNRECOGNIZED_NAME,
    ClientHelloError,
    NeedMore,
    alert_record,
    parse_client_hello,
)
from edge.front.h2_protocol import h2_factory
from edge.front.https_policy import HttpsPolicy
from edge.front.tls import TlsCertificates
from edge.limits import ConnectionLimits
from edge.metrics import NodeMetrics
from fleet.config import Fleet, NodeConfig
from runtime.tasks import cancel_and_wait

if TYPE_CHECKING:
    from edge.engine import Engine

__all__ = ["TlsListener", "start_tls_listener"]

log = logging.getLogger("edgeshield.tls")

#: seconds a client has from its connection's accept to the end of its handshake,
#: reading its ClientHello included (nginx's ssl_handshake_timeout is 60; Python's
#: default 60 too; a handshake is a few round trips)
HANDSHAKE_TIMEOUT = 10.0

#: the least time the TLS layer is given for the rest of a handshake, however long the
#: hello took to arrive
MIN_HANDSHAKE_REST = 1.0

#: seconds the kernel holds a connection that has sent nothing before we accept it
#: (TCP_DEFER_ACCEPT, Linux; nginx's `listen ... deferred`): a client's hello follows its
#: connection at once, so it is there by the accept and no wait for it is set up; a
#: client that says nothing costs no descriptor until then, and HANDSHAKE_TIMEOUT
#: after it
DEFER_ACCEPT = 1

#: seconds between session-ticket keys. A new listener context draws a new random key;
#: tickets made under the old one no longer resume (a full handshake instead), so a key
#: that leaks opens at most this much recorded traffic (RFC 8446 4.6.1 caps a ticket's
#: life at 7 days; nginx keeps its random key until a restart).
TICKET_KEY_LIFETIME = 12 * 3600.0

#: connections accepted per wake of the listening socket (asyncio's create_server
#: takes up to its backlog per wake; a bound keeps one wake short under a flood)
ACCEPT_BATCH = 64

#: seconds accepting pauses when the process is out of descriptors or memory
ACCEPT_PAUSE = 1.0

#: a readable wake that brought no byte (memory pressure wakes a socket below its
#: low-water mark) pauses that connection's reading this long, doubling, up to the cap
REPEEK_PAUSE = 0.01
REPEEK_PAUSE_MAX = 0.5

_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

_UNRECOGNIZED_NAME_ALERT = alert_record(UNRECOGNIZED_NAME)
_DECODE_ERROR_ALERT = alert_record(DECODE_ERROR)


@dataclass
class TlsListener:
    """A running TLS listener and the certificates it serves.

    It accepts on `sock` itself: each connection's ClientHello is read (`_Hello`) and
    the connection then refused with an alert or handed to the loop's TLS layer with
    the current listener context. A new context (a new ticket key, `rotate`) is used
    from the next hand-over on; connections made with the old one go on."""

    certificates: TlsCertificates
    factory: ProtocolFactory
    sock: socket.socket
    context: ssl.SSLContext
    limits: ConnectionLimits | None = None
    _rotation: asyncio.Task[None] | None = None
    _hellos: set[_Hello] = field(default_factory=set)
    _handshakes: set[asyncio.Task[None]] = field(default_factory=set)
    _accepting: bool = False

    @classmethod
    async def open(
        cls,
        factory: ProtocolFactory,
        sock: socket.socket,
        certificates: TlsCertificates,
        limits: ConnectionLimits | None = None,
    ) -> TlsListener:
        """Accept TLS on `sock` (listening, non-blocking) with `certificates` (the
        listener owns the socket); `limits`, when given, bound the connections in
        their handshake with those already served."""
        sock.setblocking(False)
        defer = getattr(socket, "TCP_DEFER_ACCEPT", None)
        if defer is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, defer, DEFER_ACCEPT)
        listener = cls(certificates, factory, sock, certificates.listener_context(), limits)
        listener._resume_accepting()
        return listener

    async def rotate(self) -> None:
        """Take new connections with a new listener context (a new ticket key)."""
        self.context = self.certificates.listener_context(fresh=True)

    async def _rotate_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.rotate()

    def start(self, ticket_key_lifetime: float = TICKET_KEY_LIFETIME) -> None:
        """Start replacing the ticket key every `ticket_key_lifetime` seconds."""
        if self._rotation is None:
            self._rotation = asyncio.get_running_loop().create_task(
                self._rotate_forever(ticket_key_lifetime)
            )

    async def close(self) -> None:
        """Stop accepting, drop the connections still in their hello or handshake, and
        stop watching the files (open connections are the HTTP fronts' to close)."""
        if self._rotation is not None:
            await cancel_and_wait(self._rotation)
        self._pause_accepting()
        for hello in list(self._hellos):
            hello.close()
        for task in list(self._handshakes):
            await cancel_and_wait(task)
        self.sock.close()
        await self.certificates.stop()

    def _resume_accepting(self) -> None:
        if not self._accepting and self.sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._accepting = False

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # as asyncio's own accept loop: wait for descriptors to be given back
                log.error("TLS accept paused %.0f s: %s", ACCEPT_PAUSE, exc)
                self._pause_accepting()
                asyncio.get_running_loop().call_later(ACCEPT_PAUSE, self._resume_accepting)
                return
            if self.limits is not None and not self.limits.admit_handshake():
                conn.close()
                continue
            _Hello(self, conn).begin()

    def _decide(self, hello: _Hello, server_name: str | None) -> None:
        """The hello is in: refuse a name no certificate serves, hand over the rest."""
        if self.certificates.context_for(server_name) is None:
            if self.certificates.metrics is not None:
                self.certificates.metrics.tls_unrecognized_name.inc()
            # RFC 6066 3: a server that does not recognise the name sends the fatal
            # alert unrecognized_name rather than another name's certificate
            hello.refuse(_UNRECOGNIZED_NAME_ALERT)
            return
        sock, rest = hello.release()
        task = asyncio.get_running_loop().create_task(self._handshake(sock, rest))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket, timeout: float) -> None:
        """The TLS layer reads the hello we left in place and completes the handshake;
        the listener context's SNI callback (edge/front/tls.py) still picks the
        certificate, and still refuses what it does not know."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self.factory, sock, ssl=self.context, ssl_handshake_timeout=timeout
            )
        except (OSError, ssl.SSLError, TimeoutError):
            # a failed handshake: the TLS layer closes the socket it took (closing it
            # here as well could close a descriptor already given to another)
            pass
        finally:
            if self.limits is not None:
                self.limits.handshake_ended()

    def _ended(self, hello: _Hello, *, handed_over: bool) -> None:
        self._hellos.discard(hello)
        if not handed_over and self.limits is not None:
            self.limits.handshake_ended()


class _Hello:
    """One accepted connection until its ClientHello is read, peeked at in place.

    Each look peeks at everything there from the first byte (the parser keeps no
    state). While the hello is incomplete, the socket's low-water mark is the byte
    count the parser asked for, so a hello dribbled in many segments wakes the loop
    once when it is whole; a wake that brings nothing new (the peer's FIN, or the
    kernel waking a socket below the mark under memory pressure) is not looked at again
    at once: reading pauses, so no wake can spin."""

    __slots__ = (
        "deadline",
        "fd",
        "listener",
        "loop",
        "low_water",
        "pause",
        "peeked",
        "reading",
        "sock",
        "timer",
    )

    def __init__(self, listener: TlsListener, sock: socket.socket) -> None:
        self.listener = listener
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + HANDSHAKE_TIMEOUT
        self.peeked = -1
        self.pause = REPEEK_PAUSE
        self.timer: asyncio.TimerHandle | None = None
        self.low_water = 1
        self.reading = False

    def begin(self) -> None:
        """Look at once (under load a hello is often there by the accept: no timer,
        no reader), then wait."""
        self.sock.setblocking(False)
        self.listener._hellos.add(self)
        if self._look(woken=False):
            self.timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self.close)
            self._read()

    def _read(self) -> None:
        self.loop.add_reader(self.fd, self._readable)
        self.reading = True

    def _readable(self) -> None:
        if not self._look(woken=True):
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _resume(self) -> None:
        if self.sock.fileno() >= 0 and self._look(woken=False):
            self._read()

    def _look(self, *, woken: bool) -> bool:
        """Peek and act on what the hello says; True: wait for more bytes."""
        try:
            data = self.sock.recv(MAX_HELLO_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            self.close()
            return False
        if data is not None and not data:
            self.close()  # the client closed before saying anything
            return False
        seen = -1 if data is None else len(data)
        if woken and seen <= self.peeked:
            if _peer_closed(self.sock):
                self.close()  # the client closed in the middle of its hello
            else:
                self._pause()
            return False
        self.peeked = seen
        try:
            hello = parse_client_hello(data or b"")
        except ClientHelloError:
            # RFC 8446 6.2 decode_error for a hello that does not parse; bytes that
            # are not TLS at all (plain HTTP on the TLS port) get no TLS answer
            looks_tls = data is not None and data[0] == HANDSHAKE_RECORD
            self.refuse(_DECODE_ERROR_ALERT if looks_tls else None)
            return False
        if isinstance(hello, NeedMore):
            # with no byte yet, the first may as well wake us: most hellos come whole
            if data:
                self._low_water(hello.at_least)
            self.pause = REPEEK_PAUSE
            return True
        self.listener._decide(self, hello.server_name)
        return False

    def _pause(self) -> None:
        delay = min(self.pause, max(0.0, self.deadline - self.loop.time()))
        self.pause = min(self.pause * 2, REPEEK_PAUSE_MAX)
        self.loop.call_later(delay, self._resume)

    def _low_water(self, count: int) -> None:
        # a hint: without it the loop wakes per segment and the parser says NeedMore
        # again, which costs a peek, not a spin (a wake with no new byte pauses)
        if count != self.low_water:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)
            self.low_water = count

    def _stop_waiting(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._stop_reading()

    def release(self) -> tuple[socket.socket, float]:
        """The socket, for the TLS layer (low-water mark back to 1 byte), and the
        seconds left of the handshake's time."""
        self._stop_waiting()
        self._low_water(1)
        self.listener._ended(self, handed_over=True)
        return self.sock, max(MIN_HANDSHAKE_REST, self.deadline - self.loop.time())

    def refuse(self, alert: bytes | None) -> None:
        """Send `alert` (a whole record) and close. The hello is read out of the socket
        first: a socket closed with unread bytes resets the connection, and the reset
        could reach the client before it has read the alert."""
        self._read_out()
        if alert is not None:
            try:
                self.sock.send(alert)
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.close()

    def _read_out(self) -> None:
        """Read what the peek saw (and a little more): a client that keeps sending is
        reset, and that is its doing."""
        try:
            for _ in range(4):
                if not self.sock.recv(MAX_HELLO_BYTES):
                    break
        except OSError:
            pass

    def close(self) -> None:
        """Drop the connection (its time is up, or it is refused, or the node stops),
        with a FIN rather than a reset."""
        if self.sock.fileno() < 0:
            return
        self._stop_waiting()
        self._read_out()
        self.sock.close()
        self.listener._ended(self, handed_over=False)


async def start_tls_listener(
    fleet: Fleet,
    node: NodeConfig,
    sock: socket.socket,
    engine: Engine,
    http1: ProtocolFactory,
    metrics: NodeMetrics,
    access_log: AccessLog | None,
    limits: ConnectionLimits | None,
) -> TlsListener:
    """Serve TLS on `sock` (the bound `tls_listen` socket)."""
    certificates = TlsCertificates.for_node(fleet, node, metrics)
    factory = AlpnDispatch.factory(
        h2_factory(engine, metrics, access_log, limits, https=HttpsPolicy(fleet.services)),
        http1,
    )
    listener = await TlsListener.open(factory, sock, certificates, limits)
    listener.start()
    certificates.start()
    return listener


#: Linux's TCP_INFO: its first byte is the connection's state; CLOSE_WAIT (8): the peer
#: has sent its FIN, CLOSE (7): the connection is gone
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_PEER_CLOSED = {7, 8}


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the peer has closed its side (False where the platform cannot say: the
    caller then pauses and looks again, and the handshake timeout ends it)."""
    if _TCP_INFO is None:  # pragma: no cover - Linux has it
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)
    except OSError:
        return True
    return info[0] in _PEER_CLOSED
