"""The next tier: the shield ring for edges, the origin pool for shields (and fallback).

Both expose `request()` returning an `UpstreamResponse` whose body is still streaming,
and raise `UpstreamError` (ours) for failures; aiohttp's exceptions stop here.

- `ShieldRing` picks the shield for a cache key by rendezvous hashing (highest random
  weight), so every edge asks the same shield for the same key and removing one of N
  shields moves only that shield's 1/N of the keys. A shield that refuses connections
  or times out is marked down (passive) and probed on its admin `/healthz` (active).
- `OriginPool` spreads a service's requests over its origins (round robin or least
  outstanding), ejects failing ones (passive and active health checks, a circuit per
  origin), retries idempotent requests on another origin after a connect failure, and
  caps concurrent origin requests with a bounded queue (503 + Retry-After beyond it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import random
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from edge.cache.rules import group_origins
from edge.forwarding import NODE_TOKEN_HEADER, node_token
from edge.informational import InformationalClientResponse
from edge.statelog import StateLog
from fleet.config import Service, ShieldConfig

log = logging.getLogger("edgeshield.upstream")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Marks an error a node generated itself (not one it relayed from an origin).
GENERATED_ERROR_HEADER = "X-Edgeshield-Error"
#: The value of GENERATED_ERROR_HEADER when the origin could not be reached at all.
UNREACHABLE = "unreachable"


#: Seconds a body read waits before it checks that its connection is still open.
BODY_POLL = 1.0


class UpstreamError(Exception):
    """The next tier could not give an answer: `status` is what the client should see.

    `reason` is short and names nothing internal (it goes into the client's error
    body); `detail` is for the log only and may name addresses and errors.
    `unreachable`: no answer came because nothing could be reached (connection refused
    or reset before an answer, connect or answer timeout), as opposed to an answer the
    node could not use (RFC 9111 4.2.4 lets a cache serve stale when disconnected).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        detail: str = "",
        retry_after: int | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        self.unreachable = unreachable


class UpstreamResponse:
    """A response from the next tier whose body may still be arriving."""

    def __init__(
        self, response: aiohttp.ClientResponse, peer: str, on_done: Callable[[], None]
    ) -> None:
        self._response = response
        self.peer = peer
        self.status = response.status
        self.headers: CIMultiDictProxy[str] = response.headers
        self._on_done = on_done
        self._done = False
        connection = response.connection
        self._protocol = connection.protocol if connection is not None else None

    @property
    def close_delimited(self) -> bool:
        """Whether the body ends only where the upstream closes the connection.

        RFC 9112 6.3: a body is framed by chunked Transfer-Encoding (item 4) or by
        Content-Length (item 6); with neither, a response body lasts until the server
        closes the connection (item 8), and a connection cut in the middle looks just
        like the end. Responses that have no body (1xx, 204, 304) are not.
        """
        if self.status < 200 or self.status in (204, 304):
            return False
        if "content-length" in self.headers:
            return False
        codings = ",".join(self.headers.getall("transfer-encoding", [])).lower()
        return not codings.rstrip(" ,").endswith("chunked")

    @property
    def header_pairs(self) -> tuple[tuple[str, str], ...]:
        """Headers as received, decoded, in order."""
        return tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self._response.raw_headers
        )

    async def iter_chunks(self, size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamError if the upstream stops short."""
        content = self._response.content
        try:
            while chunk := await self._read(content, size):
                yield chunk
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamError(
                502, "upstream broke off the body", detail=f"{self.peer}: {exc!r}"
            ) from None
        if content.exception() is not None:
            raise UpstreamError(502, "upstream broke off the body", detail=self.peer)

    async def _read(self, content: aiohttp.StreamReader, size: int) -> bytes:
        """Up to `size` body bytes (b"" at the end), checking while it waits that the
        connection is still there.

        When an upstream breaks the framing in the middle of a body (a malformed chunk
        size), aiohttp closes the connection and stops the read timeout, but does not
        tell the body's reader, which would then wait forever: a gone connection with
        the body unfinished is a broken body.
        """
        while True:
            waiting = asyncio.timeout(BODY_POLL)
            try:
                async with waiting:
                    return await content.read(size)
            except TimeoutError:
                if not waiting.expired():
                    raise  # aiohttp's own read timeout
            if self._protocol is not None and not self._protocol.is_connected():
                raise UpstreamError(502, "upstream broke the body's framing", detail=self.peer)

    def on_done(self, callback: Callable[[], None]) -> None:
        """Also run `callback` once the response is released or closed."""
        previous = self._on_done

        def both() -> None:
            previous()
            callback()

        self._on_done = both

    def release(self) -> None:
        """Give the connection back (or close it if the body was not read)."""
        if not self._done:
            self._done = True
            self._response.release()
            self._on_done()

    def close(self) -> None:
        """Drop the connection, e.g. after the body was cut short."""
        if not self._done:
            self._done = True
            self._response.close()
            self._on_done()


class _ReuseCheckingConnector(aiohttp.TCPConnector):
    """A connector that never reuses a kept-alive connection holding unasked-for bytes.

    RFC 9112 6.3: bytes after a body delimited by Content-Length are not part of it.
    On a kept-alive connection aiohttp parses such bytes as the response to the next
    request it sends there, so an origin (or a broken middlebox) could answer a
    request it was never sent: response splitting into another cache key. aiohttp
    returns a connection to its pool at the body's end, and bytes that arrive after
    that are queued on it; a connection taken from the pool with anything queued is
    closed instead of used.
    """

    async def _get(self, *args: Any, **kwargs: Any) -> Any:
        while True:
            connection = await super()._get(*args, **kwargs)
            if connection is None or connection.protocol is None:
                return connection
            if not connection.protocol.should_close:
                return connection
            log.warning("upstream sent bytes nobody asked for: connection closed")
            connection.close()


def make_session(
    connect_timeout: float = 2.0, read_timeout: float = 30.0, tls: ssl.SSLContext | bool = True
) -> aiohttp.ClientSession:
    """A keep-alive client session for talking to the next tier (`tls`: how https
    peers are verified; see edge/upstream_tls.py)."""
    connector = _ReuseCheckingConnector(
        ssl=tls,
        limit=0,
        limit_per_host=0,
        keepalive_timeout=30,
        enable_cleanup_closed=True,
        ttl_dns_cache=300,
    )
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


@dataclass
class _Request:
    method: str
    target: str
    headers: CIMultiDict[str]
    body: AsyncIterable[bytes] | None


async def _send(
    session: aiohttp.ClientSession,
    base_url: str,
    request: _Request,
    peer: str,
    on_done: Callable[[], None],
) -> UpstreamResponse:
    """One attempt; raises _ConnectFailure or UpstreamError."""
    try:
        response = await session.request(
            request.method,
            base_url + request.target,
            headers=request.headers,
            data=request.body,
            allow_redirects=False,
            compress=None,
        )
    except aiohttp.ClientConnectorError as exc:
        on_done()
        raise _ConnectFailure(f"cannot connect to {peer}: {exc.os_error or exc}") from None
    except TimeoutError:
        on_done()
        raise UpstreamError(
            504, "upstream did not answer in time", detail=peer, unreachable=True
        ) from None
    except aiohttp.ServerDisconnectedError:
        on_done()
        raise _ConnectFailure(f"{peer} closed the connection") from None
    except aiohttp.ClientError as exc:
        on_done()
        raise UpstreamError(502, "upstream request failed", detail=f"{peer}: {exc}") from None
    return UpstreamResponse(response, peer, on_done)


class _ConnectFailure(Exception):
    """The request never reached the peer, so it is safe to send it elsewhere."""


@dataclass
class _OriginState:
    url: str
    healthy: bool = True
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    outstanding: int = 0
    #: ejections logged when they start, every few seconds while they go on, and end
    log: StateLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = StateLog(log, f"origin {self.url}")

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until


@dataclass
class OriginPool:
    """A service's origin servers, balanced, health-checked and protected."""

    service: Service
    session: aiohttp.ClientSession
    max_connections: int | None = None
    clock: Callable[[], float] = time.monotonic
    #: failures in a row that open an origin's circuit (Envoy's outlier default is 5)
    eject_after: int = 3
    eject_seconds: float = 5.0
    _origins: list[_OriginState] = field(default_factory=list)
    _rr: itertools.count[int] = field(default_factory=itertools.count)
    _semaphore: asyncio.Semaphore | None = None
    _queued: int = 0
    _health_task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        groups = [url for g in self.service.traffic.origin_groups for url in g.origins]
        self._origins = [
            _OriginState(url) for url in dict.fromkeys([*self.service.origins, *groups])
        ]
        limit = self.max_connections or self.service.max_origin_connections
        self._semaphore = asyncio.Semaphore(limit)

    @property
    def origins(self) -> Sequence[_OriginState]:
        """Each origin's state (for metrics and tests)."""
        return self._origins

    def _order(self, allowed: Collection[str] | None = None) -> list[_OriginState]:
        now = self.clock()
        origins = (
            self._origins if allowed is None else [o for o in self._origins if o.url in allowed]
        )
        live = [o for o in origins if o.available(now)]
        if not live:
            # All ejected: try them anyway, least recently failed first, rather than
            # refuse outright (a full outage answers the same; a recovery is seen).
            live = sorted(origins, key=lambda o: o.ejected_until)
        if self.service.load_balancing == "least_outstanding":
            return sorted(live, key=lambda o: o.outstanding)
        start = next(self._rr) % len(live)
        return live[start:] + live[:start]

    def _group_origins(
        self, method: str, target: str, headers: CIMultiDict[str]
    ) -> Collection[str] | None:
        """The origins of the request's origin group (edge.cache.rules); None: all."""
        if not self.service.traffic.origin_groups:
            return None
        now = self.clock()
        states = {o.url: o for o in self._origins}
        return group_origins(
            self.service.traffic,
            self.service.origins,
            method,
            target,
            headers,
            lambda url: states[url].available(now),
            random.random(),
        )

    def _failed(self, origin: _OriginState) -> None:
        origin.consecutive_failures += 1
        if origin.consecutive_failures >= self.eject_after:
            origin.ejected_until = self.clock() + self.eject_seconds
            origin.log.failed(f"ejected for {self.eject_seconds:.0f}s")

    def _succeeded(self, origin: _OriginState) -> None:
        origin.consecutive_failures = 0
        origin.ejected_until = 0.0
        origin.log.recovered()

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        """Send a request to one origin of the service, failing over where safe."""
        assert self._semaphore is not None
        if self._semaphore.locked():
            if self._queued >= self.service.origin_queue:
                raise UpstreamError(503, "origin connection limit reached", retry_after=1)
            self._queued += 1
            try:
                await asyncio.wait_for(
                    self._semaphore.acquire(), timeout=self.service.origin_queue_timeout
                )
            except TimeoutError:
                raise UpstreamError(
                    503, "waited too long for an origin connection", retry_after=1
                ) from None
            finally:
                self._queued -= 1
        else:
            await self._semaphore.acquire()
        released = False

        def release_slot() -> None:
            nonlocal released
            if not released:
                released = True
                assert self._semaphore is not None
                self._semaphore.release()

        request = _Request(method, target, headers, body)
        last_error = "no origin configured"
        retryable = method in IDEMPOTENT and body is None
        try:
            order = self._order(self._group_origins(method, target, headers))
            for position, origin in enumerate(order):
                origin.outstanding += 1
                done = _once(_decrement(origin))
                try:
                    response = await _send(self.session, origin.url, request, origin.url, done)
                except _ConnectFailure as exc:
                    self._failed(origin)
                    last_error = str(exc)
                    if not retryable:
                        break
                    continue
                except UpstreamError:
                    self._failed(origin)
                    raise
                if response.status >= 500 and retryable and response.status in (502, 503, 504):
                    self._failed(origin)
                    last_error = f"{origin.url} answered {response.status}"
                    if position < len(order) - 1:
                        response.close()
                        continue
                else:
                    self._succeeded(origin)
                response.on_done(release_slot)
                return response
        except BaseException:
            release_slot()
            raise
        release_slot()
        raise UpstreamError(502, "origin unreachable", detail=last_error, unreachable=True)

    async def health_loop(self) -> None:
        """Active health checks: GET the service's health path on every origin."""
        path = self.service.health_check_path
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.service.health_check_interval))
        while True:
            for origin in self._origins:
                try:
                    async with self.session.get(origin.url + path, timeout=timeout) as response:
                        healthy = response.status < 500
                except (TimeoutError, aiohttp.ClientError, OSError):
                    healthy = False
                if healthy and not origin.healthy:
                    self._succeeded(origin)
                elif not healthy and origin.healthy:
                    origin.log.turned_unhealthy("failed its health check")
                origin.healthy = healthy
            await asyncio.sleep(self.service.health_check_interval)

    def start(self) -> None:
        """Start the active health checks."""
        if self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self.health_loop())

    async def stop(self) -> None:
        """Stop the health checks."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None


def _decrement(origin: _OriginState) -> Callable[[], None]:
    def decrement() -> None:
        origin.outstanding -= 1

    return decrement


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    called = False

    def wrapper() -> None:
        nonlocal called
        if not called:
            called = True
            fn()

    return wrapper


def rendezvous_order(key: str, names: Sequence[str]) -> list[str]:
    """The names ordered by rendezvous (highest random weight) hashing for `key`."""
    return sorted(
        names,
        key=lambda name: hashlib.blake2b(f"{name}\x00{key}".encode(), digest_size=8).digest(),
        reverse=True,
    )


@dataclass
class _ShieldState:
    config: ShieldConfig
    down_until: float = 0.0
    healthy: bool = True
    log: StateLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = StateLog(log, f"shield {self.config.name}")


@dataclass
class ShieldRing:
    """The shield tier as an edge sees it: one shield per key, failover to the next."""

    shields: Sequence[ShieldConfig]
    session: aiohttp.ClientSession
    node_secret: str
    clock: Callable[[], float] = time.monotonic
    #: how long a passively failed shield is skipped before it is tried again
    down_seconds: float = 3.0
    probe_interval: float = 1.0
    #: reach shields on their TLS listeners (`[security] node_ca` is set)
    tls: bool = False
    _states: dict[str, _ShieldState] = field(default_factory=dict)
    _names: list[str] = field(default_factory=list)
    _probe_task: asyncio.Task[None] | None = None
    _token: str = ""

    def __post_init__(self) -> None:
        self._token = node_token(self.node_secret)
        self._states = {s.name: _ShieldState(s) for s in self.shields}
        self._names = [s.name for s in self.shields]

    @property
    def names(self) -> list[str]:
        """The shields' names."""
        return self._names

    def order(self, key: str) -> list[ShieldConfig]:
        """Live shields for `key`, preferred first; dead ones are skipped."""
        now = self.clock()
        ordered = [self._states[name] for name in rendezvous_order(key, self._names)]
        return [s.config for s in ordered if s.healthy and now >= s.down_until]

    def mark_down(self, name: str) -> None:
        """Passive health: this shield failed a request."""
        state = self._states[name]
        state.down_until = self.clock() + self.down_seconds
        state.log.failed(f"marked down for {self.down_seconds:.0f}s")

    async def request(
        self,
        key: str,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse | None:
        """Ask the key's shield, failing over; None when no shield could answer.

        The request carries the node token (NODE_TOKEN_HEADER), by which the shield
        knows the forwarding fields are ours; it goes to shields only, never to origins.
        """
        if self._token:
            headers = headers.copy()
            headers[NODE_TOKEN_HEADER] = self._token
        request = _Request(method, target, headers, body)
        retryable = method in IDEMPOTENT and body is None
        for shield in self.order(key):
            try:
                url = shield.tls_url if self.tls else shield.url
                response = await _send(self.session, url, request, shield.name, lambda: None)
            except _ConnectFailure:
                self.mark_down(shield.name)
                if not retryable:
                    raise UpstreamError(
                        502,
                        "shield unreachable",
                        detail=f"shield {shield.name}",
                        unreachable=True,
                    ) from None
                continue
            except UpstreamError:
                self.mark_down(shield.name)
                if not retryable:
                    raise
                continue
            if response.status >= 500 and response.headers.get(GENERATED_ERROR_HEADER) == "node":
                # the shield itself failed (not an origin error it relays): try the next
                self.mark_down(shield.name)
                if retryable:
                    response.close()
                    continue
            else:
                self._states[shield.name].log.recovered()
            return response
        return None

    async def probe_loop(self) -> None:
        """Active health: poll each shield's admin /healthz."""
        timeout = aiohttp.ClientTimeout(total=max(0.5, self.probe_interval))
        headers = {"Authorization": f"Bearer {self.node_secret}"}
        while True:
            for state in self._states.values():
                try:
                    async with self.session.get(
                        state.config.admin_url + "/healthz", headers=headers, timeout=timeout
                    ) as response:
                        healthy = response.status == 200
                except (TimeoutError, aiohttp.ClientError, OSError):
                    healthy = False
                if healthy and not state.healthy:
                    state.log.recovered()
                    state.down_until = 0.0
                elif not healthy and state.healthy:
                    state.log.turned_unhealthy("failed its health check")
                state.healthy = healthy
            await asyncio.sleep(self.probe_interval)

    def start(self) -> None:
        """Start the active probes."""
        if self._probe_task is None and self.shields:
            self._probe_task = asyncio.get_running_loop().create_task(self.probe_loop())

    async def stop(self) -> None:
        """Stop the probes."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
