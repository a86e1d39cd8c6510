"""A hostile origin behind a real fleet (origin -> shield -> edge, real processes).

The origin (`tests.support.hostile_origin`) sends decompression bombs, endless and
close-delimited bodies, bodies longer or shorter than their Content-Length, bodies
over the object size limit and broken chunked framing. What must hold: the nodes'
memory and disk stay bounded (RSS under 300 MiB through a 1 GiB bomb, no more than
max_object_size of a body on disk in either tier), and no truncated body is ever
stored or served as a whole one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.fleet_runner import TieredFleet, client_session
from tests.support.hostile_origin import CLOSED_SIZE, HostileOrigin
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

HOST = "www.example.com"
#: a second service, on the same origin, that opts in to storing close-delimited bodies
TRUSTING = "trusting.example.com"
LIMIT = 8 * 1024 * 1024
#: the most a bomb's coded body (what the origin sends: 256 MiB of gzip, 1 GiB of br)
#: takes on disk as stored
CODED_BOMB_BOUND = 1024 * 1024
RSS_BOUND = 300 * 1024 * 1024


class Fleet:
    """The fleet under attack and its origin."""

    def __init__(self, fleet: TieredFleet, origin: HostileOrigin) -> None:
        self.fleet = fleet
        self.origin = origin
        self.edge = fleet.url(fleet.edge_names[0])
        self.shield_name = fleet.shield_names[0]
        self.edge_name = fleet.edge_names[0]

    def pid(self, name: str) -> int:
        """The process id of a node."""
        proc = self.fleet.nodes[name].proc
        assert proc is not None
        return proc.pid

    def growth(self, name: str) -> Callable[[], int]:
        """A probe of how many body bytes a node's cache holds beyond what it holds now."""
        base = self.body_bytes(name)
        return lambda: self.body_bytes(name) - base

    def body_bytes(self, name: str) -> int:
        """Bytes of body files (stored and being written) in a node's cache."""
        root = Path(self.fleet.config(name).cache_dir) / "objects"
        total = 0
        for sub in ("bodies", "tmp"):
            for dirpath, _dirs, files in os.walk(root / sub):
                for file in files:
                    with contextlib.suppress(FileNotFoundError):
                        total += os.stat(os.path.join(dirpath, file)).st_size
        return total

    async def metrics(self, name: str) -> str:
        """A node's /metrics text."""
        admin = self.fleet.config(name).admin_listen
        async with (
            client_session() as client,
            client.get(
                f"http://{admin}/metrics", headers={"Authorization": "Bearer test-node-secret"}
            ) as response,
        ):
            assert response.status == 200
            return await response.text()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes (/proc/PID/status VmRSS)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert match is not None
    return int(match.group(1)) * 1024


class Sampler:
    """Samples a value in a thread while a test runs; keeps the peak."""

    def __init__(self, probe: Callable[[], int], period: float = 0.02) -> None:
        self.probe = probe
        self.period = period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.probe())
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.probe())


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One shield and one edge in front of the hostile origin, for the whole module."""
    origin = HostileOrigin(LIMIT).start()
    started: list[NodeProcess] = []
    try:
        trusting = (
            f'max_object_size = "{LIMIT}"\n\n[[services]]\nname = "trusting"\n'
            f'hosts = ["{TRUSTING}"]\norigins = ["{origin.url}"]\n'
            f'max_object_size = "{LIMIT}"\ncache_close_delimited = true\n'
        )
        fleet = TieredFleet(
            tmp_path_factory.mktemp("hostile"),
            [origin.url],
            started,
            edges=1,
            shields=1,
            service_extra=trusting,
        ).start()
        yield Fleet(fleet, origin)
    finally:
        for node in reversed(started):
            node.stop()
        origin.stop()


async def fetch(
    url: str, path: str, host: str = HOST, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes | None]:
    """GET through the edge; the body is None when the connection was cut."""
    async with (
        client_session(60) as client,
        client.get(url + path, headers={"Host": host, **(headers or {})}) as response,
    ):
        try:
            body: bytes | None = await response.read()
        except aiohttp.ClientPayloadError:
            body = None
        return response.status, dict(response.headers), body


@pytest.mark.parametrize("path", ["/bomb.br", "/bomb.gz"])
async def test_decompression_bomb_keeps_memory_bounded(attacked: Fleet, path: str) -> None:
    # the module's fleet holds what earlier tests stored: the bomb is measured by what
    # it adds to the edge's disk
    stored_before = attacked.body_bytes(attacked.edge_name)
    refused_before = metric(
        await attacked.metrics(attacked.edge_name), "edgeshield_decode_refused_total"
    )
    with (
        Sampler(lambda: rss(attacked.pid(attacked.shield_name))) as shield_rss,
        Sampler(lambda: rss(attacked.pid(attacked.edge_name))) as edge_rss,
        Sampler(lambda: attacked.body_bytes(attacked.edge_name)) as edge_disk,
    ):
        status, _headers, body = await fetch(
            attacked.edge, path, headers={"Accept-Encoding": "identity"}
        )
        # decoded for this client up to the object limit, then cut; and refused again
        # when the edge makes its identity variant, which drops the object
        await wait_until_metric(
            attacked, attacked.edge_name, "edgeshield_decode_refused_total", refused_before + 2
        )
    # the 1 GiB (br) / 256 MiB (gzip) decoding never happens whole, nor in memory
    assert shield_rss.peak < RSS_BOUND, shield_rss.peak
    assert edge_rss.peak < RSS_BOUND, edge_rss.peak
    assert body is None or status >= 500
    # on disk at once at most: the coded body as the origin sent it (a few hundred KiB
    # for either bomb) and a refused identity variant cut at the object limit
    assert edge_disk.peak - stored_before <= LIMIT + CODED_BOMB_BOUND, edge_disk.peak
    # not kept, and not fetched and decoded again for every request that follows: the
    # key is refused at once for a while, whatever coding the client accepts
    for accept in ("br", "identity"):
        status, headers, body = await fetch(
            attacked.edge, path, headers={"Accept-Encoding": accept}
        )
        assert status == 502, status
        assert "edge1; detail=decode-limit" in headers["Cache-Status"], headers
    assert (
        metric(await attacked.metrics(attacked.edge_name), "edgeshield_decode_refused_total")
        == refused_before + 2
    )
    # and once the refusal has dropped the object, no more than the limit stays
    await eventually(
        lambda: attacked.body_bytes(attacked.edge_name) - stored_before <= LIMIT,
        "the refused bomb's files to be gone",
    )


async def wait_until_metric(
    attacked: Fleet, node: str, name: str, at_least: float, timeout: float = 20.0
) -> None:
    """Wait until a node's counter reaches `at_least`."""
    deadline = time.monotonic() + timeout
    while metric(await attacked.metrics(node), name) < at_least:
        assert time.monotonic() < deadline, f"{name} stayed below {at_least}"
        await asyncio.sleep(0.05)


async def test_endless_body_is_passed_not_stored_and_stops_with_the_client(
    attacked: Fleet,
) -> None:
    url = attacked.edge + "/endless-leaving"
    async with (
        client_session(60) as client,
        client.get(url, headers={"Host": HOST}) as response,
    ):
        assert response.status == 200
        assert "detail=close-delimited" in response.headers["Cache-Status"]
        got = 0
        async for chunk in response.content.iter_any():
            got += len(chunk)
            if got >= 2 * LIMIT:
                break
    # the client left: both tiers stop reading, so the origin stops writing
    await eventually(lambda: attacked.origin.active["/endless-leaving"] == 0)
    assert attacked.body_bytes(attacked.shield_name) <= LIMIT
    assert attacked.body_bytes(attacked.edge_name) <= LIMIT
    shield = await attacked.metrics(attacked.shield_name)
    edge = await attacked.metrics(attacked.edge_name)
    assert metric(shield, "edgeshield_bodies_not_stored_total", reason="close_delimited") >= 1
    assert metric(edge, "edgeshield_bodies_not_stored_total", reason="close_delimited") >= 1


async def test_endless_body_never_passes_the_limit_on_disk_when_trusted(
    attacked: Fleet,
) -> None:
    path = "/endless-trusted"
    edge_log = len(attacked.fleet.nodes[attacked.edge_name].log())
    with (
        Sampler(attacked.growth(attacked.shield_name)) as shield_disk,
        Sampler(attacked.growth(attacked.edge_name)) as edge_disk,
    ):
        status, _headers, body = await fetch(attacked.edge, path, host=TRUSTING)
        await eventually(lambda: attacked.origin.active[path] == 0)
    # cut: a body that passes max_object_size is aborted, never committed
    assert body is None or status >= 500
    assert shield_disk.peak <= LIMIT, shield_disk.peak
    assert edge_disk.peak <= LIMIT, edge_disk.peak
    # the shield stopping at the limit is not taken for a failing shield
    assert "marked down" not in attacked.fleet.nodes[attacked.edge_name].log()[edge_log:]
    again = attacked.origin.count(path)
    await fetch(attacked.edge, path, host=TRUSTING)
    await eventually(lambda: attacked.origin.active[path] == 0)
    assert attacked.origin.count(path) > again  # nothing was stored: upstream again
    shield = await attacked.metrics(attacked.shield_name)
    assert metric(shield, "edgeshield_bodies_not_stored_total", reason="too_large") >= 1


async def test_close_delimited_body_is_stored_only_when_trusted(attacked: Fleet) -> None:
    status, headers, body = await fetch(attacked.edge, "/closed")
    assert status == 200 and body is not None and len(body) == CLOSED_SIZE
    assert "detail=close-delimited" in headers["Cache-Status"]
    status, headers, body = await fetch(attacked.edge, "/closed")
    assert status == 200 and body is not None and len(body) == CLOSED_SIZE
    assert attacked.origin.count("/closed") == 2  # never a hit
    # the service that opts in stores it
    await fetch(attacked.edge, "/closed-trusted", host=TRUSTING)
    status, headers, body = await fetch(attacked.edge, "/closed-trusted", host=TRUSTING)
    assert status == 200 and body is not None and len(body) == CLOSED_SIZE
    assert attacked.origin.count("/closed-trusted") == 1
    assert "hit" in headers["Cache-Status"]


async def test_declared_too_large_is_passed_through_unstored(attacked: Fleet) -> None:
    with (
        Sampler(attacked.growth(attacked.shield_name)) as shield_disk,
        Sampler(attacked.growth(attacked.edge_name)) as edge_disk,
    ):
        status, headers, body = await fetch(attacked.edge, "/declared-big")
    assert status == 200 and body is not None and len(body) == LIMIT + 1024 * 1024
    assert "detail=too-large" in headers["Cache-Status"]
    assert shield_disk.peak <= LIMIT and edge_disk.peak <= LIMIT
    await fetch(attacked.edge, "/declared-big")
    assert attacked.origin.count("/declared-big") == 2


async def test_chunked_body_past_the_limit_is_aborted(attacked: Fleet) -> None:
    with (
        Sampler(attacked.growth(attacked.shield_name)) as shield_disk,
        Sampler(attacked.growth(attacked.edge_name)) as edge_disk,
    ):
        status, _headers, body = await fetch(attacked.edge, "/chunked-big")
    assert body is None or status >= 500
    assert shield_disk.peak <= LIMIT and edge_disk.peak <= LIMIT


@pytest.mark.parametrize("path", ["/long", "/long-late"])
async def test_body_longer_than_its_length_is_cut_at_the_length(attacked: Fleet, path: str) -> None:
    status, _headers, body = await fetch(attacked.edge, path)
    assert (status, body) == (200, b"the real body\n")
    if path == "/long-late":
        await eventually(lambda: attacked.origin.sent(path) > len(body))
    # the extra bytes looked like a response: they never answer another request
    for n in range(3):
        victim = f"/victim{path}{n}"
        status, _headers, body = await fetch(attacked.edge, victim)
        assert (status, body) == (200, f"plain {victim}\n".encode())


async def test_body_shorter_than_its_length_is_never_served_whole(attacked: Fleet) -> None:
    for _ in range(2):
        status, _headers, body = await fetch(attacked.edge, "/short")
        assert body is None or status >= 500
    assert attacked.origin.count("/short") >= 2  # never stored


async def test_bad_chunked_framing_is_not_stored(attacked: Fleet) -> None:
    for _ in range(2):
        # well within the nodes' 30 s read timeout, which aiohttp drops in this case
        status, _headers, body = await asyncio.wait_for(fetch(attacked.edge, "/bad-chunk"), 10)
        assert body is None or status >= 500
    assert attacked.origin.count("/bad-chunk") >= 2


async def test_slow_body_is_stored_whole(attacked: Fleet) -> None:
    status, _headers, body = await fetch(attacked.edge, "/slow")
    assert status == 200 and body is not None and len(body) == 20_000
    status, headers, body2 = await fetch(attacked.edge, "/slow")
    assert body2 == body and "hit" in headers["Cache-Status"]
    assert attacked.origin.count("/slow") == 1
