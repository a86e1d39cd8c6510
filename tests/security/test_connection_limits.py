"""Attacks on an edge's client connections: slowloris heads, idle keep-alives, floods.

Two real edges in front of a real origin, each with its own limits in fleet.toml:
`heads` (one worker, head_timeout 1 s, a long keep-alive, 30 connections at most) and
`idle` (two workers sharing the port, keepalive_timeout 1 s, 20 connections at most
for the node). Counters are read from each node's `/metrics`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.config import Fleet
from tests.support.connection_limits import (
    HOST,
    GatedOrigin,
    RawClient,
    get_request,
    limits_fleet,
    metric_at_least,
    node_metric,
)
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

HEAD_TIMEOUT = 1.0
KEEPALIVE = 1.0
HEADS_CAP = 30
IDLE_CAP = 20


@dataclass
class LimitsFleet:
    """The running edges and their origin."""

    fleet: Fleet
    origin: GatedOrigin

    def url(self, name: str) -> str:
        return self.fleet.edge(name).url

    def admin(self, name: str) -> str:
        return self.fleet.edge(name).admin_url


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimitsFleet]:
    root: Path = tmp_path_factory.mktemp("limits")
    origin = GatedOrigin().start()
    started: list[NodeProcess] = []
    try:
        fleet = limits_fleet(
            root,
            origin.url,
            [
                f"max_connections = {HEADS_CAP}\nhead_timeout = {HEAD_TIMEOUT}\n"
                "keepalive_timeout = 60.0\n",
                f"max_connections = {IDLE_CAP}\nhead_timeout = 30.0\n"
                f"keepalive_timeout = {KEEPALIVE}\nworkers = 2\n",
            ],
        )
        for edge in fleet.edges:
            node = NodeProcess(
                ["edge", "--config", fleet.source, "--node", edge.name],
                root / f"{edge.name}.log",
                env={"EDGESHIELD_ACCESS_LOG": "0"},
            ).start()
            started.append(node)
        for node, edge in zip(started, fleet.edges, strict=True):
            node.wait_listening(edge.listen).wait_listening(edge.admin_listen)
        yield LimitsFleet(fleet, origin)
    finally:
        for node in reversed(started):
            node.stop()
        origin.close()


HEADS = "edge1"
IDLE = "edge2"


async def served_plain(url: str, path: str = "/still-serving") -> bool:
    """A plain request on a new connection gets a 200, once the node has counted out
    the connections a test just closed (it learns of each close asynchronously, and
    until then a new connection may still be over the cap)."""

    async def served() -> bool:
        client = await RawClient.connect(url)
        try:
            await client.send(get_request(path))
            status, _, _ = await client.response()
            return status == 200
        except (asyncio.IncompleteReadError, ConnectionError):
            return False  # refused: the closed connections are not counted out yet
        finally:
            client.close()

    await eventually(served, "a plain request served")
    return True


async def trickle(client: RawClient, first: bytes) -> None:
    """Send a head a header line at a time, never ending it, until the peer closes."""
    if not await client.send(first):
        return
    line = 0
    while await client.send(f"X-Slow-{line}: still coming\r\n".encode()):
        line += 1
        await asyncio.sleep(0.2)  # the attack itself: one header line every 200 ms


async def test_a_slowloris_head_is_cut_after_head_timeout(edges: LimitsFleet) -> None:
    url, admin = edges.url(HEADS), edges.admin(HEADS)
    before = await node_metric(admin, "edgeshield_head_timeouts_total")
    clients = [await RawClient.connect(url) for _ in range(10)]
    started = time.monotonic()
    senders = [
        asyncio.create_task(trickle(c, f"GET / HTTP/1.1\r\nHost: {HOST}\r\n".encode()))
        for c in clients
    ]
    # keep-alive is 60 s on this edge: only the head deadline can close these
    results = await asyncio.gather(*(c.closed_within(10.0) for c in clients))
    elapsed = time.monotonic() - started
    for task in senders:
        task.cancel()
    for client in clients:
        client.close()
    assert all(results), "a slowloris connection was still open after 10 s"
    assert elapsed >= HEAD_TIMEOUT * 0.9
    await metric_at_least(admin, "edgeshield_head_timeouts_total", before + 10)
    assert await served_plain(url)


async def test_the_next_head_on_a_kept_alive_connection_has_its_own_deadline(
    edges: LimitsFleet,
) -> None:
    url = edges.url(HEADS)
    client = await RawClient.connect(url)
    await client.send(get_request("/first"))
    status, _, _ = await client.response()
    assert status == 200
    sender = asyncio.create_task(
        trickle(client, f"GET /second HTTP/1.1\r\nHost: {HOST}\r\n".encode())
    )
    assert await client.closed_within(10.0)
    sender.cancel()
    client.close()


async def test_a_head_sent_slowly_but_within_the_limit_is_served(edges: LimitsFleet) -> None:
    client = await RawClient.connect(edges.url(HEADS))
    for piece in (b"GET /pieces HT", b"TP/1.1\r\nHost: ", HOST.encode() + b"\r\n", b"\r\n"):
        await client.send(piece)
        await asyncio.sleep(0.05)  # the subject: a head in pieces, well inside the limit
    status, _, body = await client.response()
    client.close()
    assert status == 200 and body == b"ok /pieces\n"


async def test_connections_over_the_cap_are_refused_and_counted(edges: LimitsFleet) -> None:
    url, admin = edges.url(HEADS), edges.admin(HEADS)

    async def drained() -> bool:
        return await node_metric(admin, "edgeshield_connections_open") == 0

    await eventually(drained, "no client connections open")
    refused_before = await node_metric(admin, "edgeshield_connections_refused_total")
    held = [await RawClient.connect(url) for _ in range(HEADS_CAP)]
    for client in held:
        await client.send(get_request("/gate/cap"))
    await metric_at_least(admin, "edgeshield_connections_open", HEADS_CAP)

    extra = [await RawClient.connect(url) for _ in range(5)]
    for client in extra:
        await client.send(get_request("/over-the-cap"))
    for client in extra:
        answer = b""
        try:
            async with asyncio.timeout(10):
                answer = await client.reader.read()
        except (ConnectionError, OSError):
            pass
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer[:100]
        client.close()
    await metric_at_least(admin, "edgeshield_connections_refused_total", refused_before + 5)
    assert await node_metric(admin, "edgeshield_connections_open") == HEADS_CAP

    edges.origin.open_gate("cap")
    for client in held:
        status, _, _ = await client.response()
        assert status == 200
        client.close()
    await eventually(drained, "the held connections counted out")
    assert await served_plain(url)


async def test_the_cap_is_the_nodes_across_its_workers(edges: LimitsFleet) -> None:
    url = edges.url(IDLE)
    clients = [await RawClient.connect(url) for _ in range(2 * IDLE_CAP)]
    for client in clients:
        await client.send(get_request("/gate/workers"))
    watchers = [asyncio.create_task(c.closed_within(15.0)) for c in clients]

    async def enough_refused() -> bool:
        return sum(w.done() and w.result() for w in watchers) >= IDLE_CAP

    # each of the 2 workers holds at most IDLE_CAP / 2 whatever the kernel's spread,
    # so at least half of these are refused at once
    await eventually(enough_refused, f"{IDLE_CAP} connections refused")
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    edges.origin.open_gate("workers")
    served = 0
    for client, watcher in zip(clients, watchers, strict=True):
        if not (watcher.done() and not watcher.cancelled() and watcher.result()):
            try:
                status, _, _ = await client.response()
                served += status == 200
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # refused, the close seen only now
        client.close()
    assert 0 < served <= IDLE_CAP
    assert await served_plain(url)


async def test_an_idle_keepalive_connection_is_closed(edges: LimitsFleet) -> None:
    client = await RawClient.connect(edges.url(IDLE))
    await client.send(get_request("/idle"))
    status, _, _ = await client.response()
    assert status == 200
    started = time.monotonic()
    assert await client.closed_within(10.0)
    assert time.monotonic() - started >= KEEPALIVE * 0.9
    client.close()


async def test_a_connection_that_sends_nothing_is_closed(edges: LimitsFleet) -> None:
    client = await RawClient.connect(edges.url(IDLE))
    assert await client.closed_within(10.0)
    client.close()


async def test_a_bad_request_gets_a_short_answer_that_echoes_nothing(edges: LimitsFleet) -> None:
    for junk in (
        b"GET /" + b"\x01" * 7000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: zz" + b"9" * 5000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"A" * 9000 + b"\r\n\r\n",
    ):
        client = await RawClient.connect(edges.url(HEADS))
        await client.send(junk)
        status, _, body = await client.response()
        client.close()
        assert status == 400
        assert len(body) < 100 and b"\x01" not in body and b"999" not in body, body[:200]


async def test_only_http_1_is_spoken_and_answered(edges: LimitsFleet) -> None:
    # a second request on the connection: the first decides nothing about the answer
    for version, answered in ((b"HTTP/2.0", b"HTTP/1.0 505 "), (b"HTTP/1.0", b"HTTP/1.0 200 ")):
        client = await RawClient.connect(edges.url(HEADS))
        await client.send(b"GET /version HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n")
        status_first, _, _ = await client.response()
        assert status_first == 200
        await client.send(b"GET /version " + version + b"\r\nHost: " + HOST.encode() + b"\r\n\r\n")
        head = await client.reader.readuntil(b"\r\n")
        client.close()
        assert head.startswith(answered), (version, head)
