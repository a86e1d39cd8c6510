"""The access log through real edges: a line per request with the client's User-Agent
and Referer, the request's id (the client's when safe, else the edge's, the one the
origin got) and the time to the upstream's head; `access_log` to stdout, to a file
that SIGHUP reopens after logrotate moved it, or off (and EDGESHIELD_ACCESS_LOG=0)."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.support.fleet_runner import TieredFleet
from tests.support.fleetfile import FleetSpec
from tests.support.origin import OriginServer, running_origin
from tests.support.processes import NodeProcess
from tests.support.waiting import eventually

HOST = "www.example.com"
#: an id an edge makes: its process's random prefix, a dash, a counter in hex
MADE_ID = re.compile(r"[0-9a-f]{10}-[0-9a-f]+")


class Edges:
    """Five edges of one fleet: access log to stdout, to a file, off, to a file but
    turned off by EDGESHIELD_ACCESS_LOG=0, and to stdout from aiohttp's front."""

    def __init__(self, root: Path, origin: OriginServer) -> None:
        spec = FleetSpec(root, origins=[origin.url], edges=5)
        self.file = root / "logs" / "access.log"
        self.overridden = root / "logs" / "overridden.log"
        self.file.parent.mkdir(parents=True)
        text = spec.render()
        for name, setting in (
            ("edge2", str(self.file)),
            ("edge3", "off"),
            ("edge4", str(self.overridden)),
        ):
            text = text.replace(
                f'name = "{name}"\n', f'name = "{name}"\naccess_log = "{setting}"\n'
            )
        # edge5: the other HTTP/1.1 front, aiohttp's server
        text = text.replace('name = "edge5"\n', 'name = "edge5"\nfront = "aiohttp"\n')
        config = root / "fleet.toml"
        config.write_text(text, encoding="utf-8")
        self.listen = dict(
            zip(
                ("edge1", "edge2", "edge3", "edge4", "edge5"),
                re.findall(r'^listen = "([^"]+)"', text, re.M),
                strict=True,
            )
        )
        self.nodes: dict[str, NodeProcess] = {}
        for name in self.listen:
            env = {"EDGESHIELD_ACCESS_LOG": "0"} if name == "edge4" else {}
            node = NodeProcess(
                ["edge", "--config", str(config), "--node", name], root / f"{name}.out", env
            )
            self.nodes[name] = node.start()
        for name, node in self.nodes.items():
            node.wait_listening(self.listen[name])

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    yield from running_origin()


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory, origin: OriginServer) -> Iterator[Edges]:
    started = Edges(tmp_path_factory.mktemp("access-log"), origin)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def get(
    client: aiohttp.ClientSession, edges: Edges, node: str, path: str, **headers: str
) -> int:
    sent = {"Host": HOST, **headers}
    async with client.get(f"http://{edges.listen[node]}{path}", headers=sent) as response:
        await response.read()
        return response.status


def lines_for(text: str, path: str) -> list[dict[str, object]]:
    """The access-log lines of `path` in a node's output or log file."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("target") == path:
                found.append(record)
    return found


async def wait_lines(read: Callable[[], str], path: str, count: int) -> list[dict[str, object]]:
    """Wait until `count` lines of `path` are written (`read`: the text so far)."""
    found: list[dict[str, object]] = []

    def written() -> bool:
        found[:] = lines_for(read(), path)
        return len(found) >= count

    await eventually(written, f"{count} access log lines for {path}", 10)
    return found


def origin_saw(origin: OriginServer, request_id: str) -> bool:
    return any(
        CIMultiDict(headers).get("X-Request-ID") == request_id for headers in origin.seen_headers
    )


@pytest.mark.parametrize("node", ["edge1", "edge5"])
async def test_a_miss_and_a_hit_are_logged_with_their_fields(
    edges: Edges, origin: OriginServer, client: aiohttp.ClientSession, node: str
) -> None:
    path = f"/logged/miss-then-hit-{node}"
    origin.route(path, headers={"Cache-Control": "max-age=300"}, body=b"x" * 100)
    browser = {"User-Agent": "Mozilla/5.0 (test) Gecko", "Referer": "https://ref.example/page"}
    assert await get(client, edges, node, path, **browser) == 200
    uuid = f"0b6f2a1e-3c1d-4d8e-9a7b-{node}"
    assert await get(client, edges, node, path, **browser, **{"X-Request-ID": uuid}) == 200
    miss, hit = await wait_lines(edges.nodes[node].log, path, 2)
    for line in (miss, hit):
        assert line["ua"] == "Mozilla/5.0 (test) Gecko"
        assert line["referer"] == "https://ref.example/page"
        assert line["proto"] == "http/1.1" and line["node"] == node
    assert "fwd=uri-miss" in str(miss["cache"])
    upstream_ms, ms = miss["upstream_ms"], miss["ms"]
    assert isinstance(upstream_ms, float) and isinstance(ms, float) and 0 < upstream_ms <= ms
    # the miss had no id of the client's: the edge made one, and the origin got it
    assert MADE_ID.fullmatch(str(miss["id"]))
    assert origin_saw(origin, str(miss["id"]))
    assert str(hit["cache"]).startswith("hit") and hit["upstream_ms"] is None
    assert hit["id"] == uuid


async def test_a_safe_client_id_reaches_the_origin_and_a_hostile_one_is_replaced(
    edges: Edges, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    safe, hostile = "trace:abc-123", 'x" ; drop' + "y" * 80
    for n, rid in enumerate((safe, hostile)):
        path = f"/logged/id-{n}"
        origin.route(path, headers={"Cache-Control": "no-store"}, body=b"x")
        assert await get(client, edges, "edge1", path, **{"X-Request-ID": rid}) == 200
    (kept,) = await wait_lines(edges.nodes["edge1"].log, "/logged/id-0", 1)
    (replaced,) = await wait_lines(edges.nodes["edge1"].log, "/logged/id-1", 1)
    assert kept["id"] == safe and origin_saw(origin, safe)
    assert MADE_ID.fullmatch(str(replaced["id"])) and origin_saw(origin, str(replaced["id"]))
    assert not origin_saw(origin, hostile)
    assert hostile not in edges.nodes["edge1"].log()


async def test_the_file_option_writes_the_file_and_sighup_reopens_it_after_a_move(
    edges: Edges, client: aiohttp.ClientSession
) -> None:
    node = edges.nodes["edge2"]
    assert node.proc is not None
    await get(client, edges, "edge2", "/logged/file-1")
    await wait_lines(edges.file.read_text, "/logged/file-1", 1)
    assert not lines_for(node.log(), "/logged/file-1")  # the file, not stdout

    # logrotate: move the file away; lines keep going to it until the node reopens
    rotated = edges.file.with_name("access.log.1")
    edges.file.rename(rotated)
    await get(client, edges, "edge2", "/logged/file-2")
    await wait_lines(rotated.read_text, "/logged/file-2", 1)
    assert not edges.file.exists()

    node.proc.send_signal(signal.SIGHUP)
    sent = 0

    async def in_the_new_file() -> bool:
        nonlocal sent
        sent += 1
        await get(client, edges, "edge2", f"/logged/file-3-{sent}")
        return edges.file.exists() and any(
            lines_for(edges.file.read_text(), f"/logged/file-3-{n}") for n in range(1, sent + 1)
        )

    await eventually(in_the_new_file, "a line in the reopened file", 10, interval=0.1)
    old, new = rotated.read_text(), edges.file.read_text()
    assert lines_for(old, "/logged/file-1") and lines_for(old, "/logged/file-2")
    assert not lines_for(new, "/logged/file-1") and not lines_for(new, "/logged/file-2")
    # every line is whole, in one file or the other
    for text in (old, new):
        assert all(json.loads(line)["node"] == "edge2" for line in text.splitlines())
    assert node.proc.poll() is None


async def test_off_and_the_environment_switch_write_nothing(
    edges: Edges, client: aiohttp.ClientSession
) -> None:
    for name in ("edge3", "edge4"):
        assert await get(client, edges, name, "/logged/off") in (200, 404)
    # stopping a node flushes its log: after it, anything it would write is written
    for name in ("edge3", "edge4"):
        assert edges.nodes[name].stop() == 0
        assert not lines_for(edges.nodes[name].log(), "/logged/off")
        assert '"target"' not in edges.nodes[name].log()
    assert not edges.overridden.exists()


async def test_an_edge_and_its_shield_log_the_id_the_origin_got(
    tmp_path: Path,
    origin: OriginServer,
    processes: list[NodeProcess],
    client: aiohttp.ClientSession,
) -> None:
    fleet = TieredFleet(
        tmp_path, [origin.url], processes, edges=1, shields=1, env={"EDGESHIELD_ACCESS_LOG": "1"}
    ).start()
    path = "/logged/through-the-shield"
    origin.route(path, headers={"Cache-Control": "max-age=300"}, body=b"x")
    async with client.get(fleet.url("edge1") + path, headers={"Host": HOST}) as response:
        assert (response.status, await response.read()) == (200, b"x")
    (at_edge,) = await wait_lines(fleet.nodes["edge1"].log, path, 1)
    (at_shield,) = await wait_lines(fleet.nodes["shield1"].log, path, 1)
    assert MADE_ID.fullmatch(str(at_edge["id"]))
    assert at_shield["id"] == at_edge["id"] and origin_saw(origin, str(at_edge["id"]))
    upstream_at_edge, upstream_at_shield = at_edge["upstream_ms"], at_shield["upstream_ms"]
    assert isinstance(upstream_at_edge, float) and isinstance(upstream_at_shield, float)
    # the edge waited for the shield, which waited for the origin
    assert upstream_at_edge >= upstream_at_shield
