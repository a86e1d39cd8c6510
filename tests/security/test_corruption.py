"""Silent corruption of stored bodies: bytes changed on disk behind the node's back.

Every body carries the checksum taken while it was written. A damaged body is never
served as a whole one: loaded into memory it fails at once (the object is dropped and
fetched again), streamed from disk the connection is cut before its last chunk, and
the background scrubber finds it without any request. A small body kept inside its
index row (no file of its own) is checked the same way when the row is read. Each
drop counts in `edgeshield_store_corrupt_total`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from edge.store import BodyRef, DiskStore, _Record
from fleet.config import load_fleet
from tests.support.fleet_runner import TieredFleet, client_session
from tests.support.origin import OriginServer, pattern_bytes
from tests.support.processes import NodeProcess
from tests.support.row_bodies import corrupt_row_body
from tests.support.waiting import eventually

HOST = "www.example.com"
BIG = 3_000_000
SMALL = 50_000
#: kept in its index row (at most `ROW_BODY_MAX`), not in a file
TINY = 2_000
CACHEABLE = {"Cache-Control": "max-age=3600", "Content-Type": "application/octet-stream"}


class Corruptible:
    """A fleet of two edges on a well-behaved origin: edge1 without the scrubber (so
    the serving path's checks are what is seen), edge2 with it."""

    def __init__(self, fleet: TieredFleet, origin: OriginServer) -> None:
        self.fleet = fleet
        self.origin = origin

    def url(self, edge: str) -> str:
        """An edge's traffic URL."""
        return self.fleet.url(edge)

    def body_file(self, edge: str, size: int) -> Path:
        """The one stored body file of `size` bytes in an edge's cache."""
        root = Path(self.fleet.config(edge).cache_dir) / "objects" / "bodies"
        found = [
            Path(dirpath) / name
            for dirpath, _dirs, files in os.walk(root)
            for name in files
            if (Path(dirpath) / name).stat().st_size == size
        ]
        assert len(found) == 1, found
        return found[0]

    def stop(self, edge: str) -> None:
        """Stop an edge (SIGTERM, waited for)."""
        self.fleet.nodes[edge].stop()

    async def metric(self, edge: str, name: str) -> float:
        """One counter of an edge's /metrics."""
        admin = self.fleet.config(edge).admin_listen
        async with (
            client_session() as client,
            client.get(
                f"http://{admin}/metrics", headers={"Authorization": "Bearer test-node-secret"}
            ) as response,
        ):
            text = await response.text()
        for line in text.splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def overwrite(path: Path, offset: int, data: bytes) -> None:
    """Change bytes in the middle of a file, keeping its size (a silent disk error)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def scrub_off(fleet: TieredFleet, edge: str) -> None:
    """Turn the scrubber off on one edge (rewrites fleet.toml before the fleet starts)."""
    text = fleet.path.read_text()
    marker = f'name = "{edge}"\n'
    head, _, tail = text.partition(marker)
    fleet.path.write_text(head + marker + "scrub_rate = 0\n" + tail)
    fleet.fleet = load_fleet(fleet.path)
    assert fleet.config(edge).scrub_rate == 0


@pytest.fixture(scope="module")
def corruptible(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corruptible]:
    """The fleet and its origin, for the whole module."""
    origin = OriginServer().start()
    started: list[NodeProcess] = []
    try:
        for path, size in (
            ("/big", BIG),
            ("/small", SMALL),
            ("/scrubbed", BIG),
            ("/tiny", TINY),
            ("/tiny-scrubbed", TINY + 1),
        ):
            origin.route(path, headers=CACHEABLE, size=size)
        fleet = TieredFleet(
            tmp_path_factory.mktemp("corruption"), [origin.url], started, edges=2, shields=0
        )
        scrub_off(fleet, "edge1")
        yield Corruptible(fleet.start(), origin)
    finally:
        for node in reversed(started):
            node.stop()
        origin.stop()


async def fetch(url: str, path: str) -> tuple[int, str, bytes | None]:
    """GET through an edge: status, Cache-Status, and the body (None when cut)."""
    async with (
        client_session(30) as client,
        client.get(url + path, headers={"Host": HOST}) as response,
    ):
        try:
            body: bytes | None = await response.read()
        except aiohttp.ClientPayloadError:
            body = None
        return response.status, response.headers.get("Cache-Status", ""), body


async def test_corrupt_bodies_are_never_served_whole(corruptible: Corruptible) -> None:
    url = corruptible.url("edge1")
    for path, size in (("/big", BIG), ("/small", SMALL)):
        status, _, body = await fetch(url, path)
        assert (status, body) == (200, pattern_bytes(size))
    corruptible.stop("edge1")
    overwrite(corruptible.body_file("edge1", BIG), BIG // 2, b"\xff" * 10)
    overwrite(corruptible.body_file("edge1", SMALL), SMALL // 2, b"\xff" * 10)
    corruptible.fleet.restart("edge1")

    # too large for memory: streamed from disk, cut before the end
    status, cache_status, body = await fetch(url, "/big")
    assert "hit" in cache_status
    assert body is None, "a corrupt body was served whole"
    # small: checked as it is loaded, so the client never sees it; fetched again
    status, cache_status, body = await fetch(url, "/small")
    assert (status, body) == (200, pattern_bytes(SMALL))
    assert "hit" not in cache_status.rsplit(",", 1)[-1]
    assert corruptible.origin.count("/small") == 2
    assert await corruptible.metric("edge1", "edgeshield_store_corrupt_total") == 2
    # the cut object was dropped: the next request fetches it again, whole
    status, cache_status, body = await fetch(url, "/big")
    assert (status, body) == (200, pattern_bytes(BIG))
    assert corruptible.origin.count("/big") == 2


async def _scrubber_found(corruptible: Corruptible, node: str, what: str) -> None:
    """Wait (up to 30 s, by its metric) until `node`'s scrubber has dropped a body."""

    async def found() -> bool:
        return await corruptible.metric(node, "edgeshield_store_corrupt_total") >= 1

    await eventually(found, f"the scrubber finding {what}", timeout=30)


async def test_scrubber_drops_corrupt_objects_nobody_asks_for(corruptible: Corruptible) -> None:
    url = corruptible.url("edge2")
    status, _, body = await fetch(url, "/scrubbed")
    assert (status, body) == (200, pattern_bytes(BIG))
    corruptible.stop("edge2")
    overwrite(corruptible.body_file("edge2", BIG), 12345, b"\x00" * 10)
    corruptible.fleet.restart("edge2")
    await _scrubber_found(corruptible, "edge2", "the damaged body")
    status, cache_status, body = await fetch(url, "/scrubbed")
    assert (status, body) == (200, pattern_bytes(BIG))
    assert "hit" not in cache_status
    assert corruptible.origin.count("/scrubbed") == 2


async def test_checksums_survive_a_reopen_and_catch_damage(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "store"), 64 * 1024 * 1024)
    writer = store.begin("k")
    body = pattern_bytes(SMALL)
    for pos in range(0, SMALL, 7000):
        await writer.write(body[pos : pos + 7000])
    entry = await writer.commit("meta")
    ref: BodyRef = entry.bodies["identity"]
    assert ref.checksum is not None
    await store.close()

    reopened = await DiskStore.open(str(tmp_path / "store"), 64 * 1024 * 1024)
    found: list[str] = []
    reopened.on_corrupt = found.append
    loaded = await reopened.get("k")
    assert loaded is not None and loaded.bodies["identity"].checksum == ref.checksum
    assert loaded.bodies["identity"].data == body
    reopened.forget_cached("k")
    assert ref.path is not None
    overwrite(Path(ref.path), 100, b"x")
    assert await reopened.get("k") is None
    assert found == ["k"]
    assert await reopened.keys() == []  # dropped, not only skipped
    await reopened.close()


async def test_rows_written_before_checksums_still_load(tmp_path: Path) -> None:
    # a body in a file, as every body was then
    store = await DiskStore.open(str(tmp_path / "store"), 64 * 1024 * 1024, row_body_max=0)
    writer = store.begin("old")
    await writer.write(b"stored before checksums")
    entry = await writer.commit("meta")
    ref = entry.bodies["identity"]
    assert ref.path is not None
    rel = os.path.relpath(ref.path, store.directory)
    # the row as an older version wrote it: (encoding, path, size), no checksum
    store.index.set("old", _Record("meta", (("identity", rel, ref.size),)))  # type: ignore[arg-type]
    store.forget_cached("old")
    loaded = await store.get("old")
    assert loaded is not None
    assert loaded.bodies["identity"].data == b"stored before checksums"
    assert loaded.bodies["identity"].checksum is None
    assert await store.scrub("old", 1 << 30) == 0  # nothing to check it against
    await store.close()


async def test_a_body_damaged_in_its_index_row_is_dropped_and_fetched_again(
    corruptible: Corruptible,
) -> None:
    url = corruptible.url("edge1")
    status, _, body = await fetch(url, "/tiny")
    assert (status, body) == (200, pattern_bytes(TINY))
    corruptible.stop("edge1")
    store_dir = Path(corruptible.fleet.config("edge1").cache_dir) / "objects"
    corrupt_row_body(store_dir, None, pattern_bytes(TINY))
    corruptible.fleet.restart("edge1")

    # its ready answer (a copy of its own, checked by its own checksum) answers a
    # worker's first two reads of it, soundly; the read through the index (each
    # worker's third) finds the damaged row, drops it and fetches the object again
    for _ in range(3 * 8):  # every worker's third read, for up to 8 workers
        status, cache_status, body = await fetch(url, "/tiny")
        assert (status, body) == (200, pattern_bytes(TINY))
        if "hit" not in cache_status.rsplit(",", 1)[-1]:
            break
    assert "hit" not in cache_status.rsplit(",", 1)[-1]
    assert corruptible.origin.count("/tiny") == 2
    # counted since the restart
    assert await corruptible.metric("edge1", "edgeshield_store_corrupt_total") == 1
    status, cache_status, body = await fetch(url, "/tiny")  # stored again, sound
    assert (status, body) == (200, pattern_bytes(TINY)) and "hit" in cache_status


async def test_scrubber_drops_a_body_damaged_in_its_index_row(corruptible: Corruptible) -> None:
    url = corruptible.url("edge2")
    status, _, body = await fetch(url, "/tiny-scrubbed")
    assert (status, body) == (200, pattern_bytes(TINY + 1))
    corruptible.stop("edge2")
    store_dir = Path(corruptible.fleet.config("edge2").cache_dir) / "objects"
    corrupt_row_body(store_dir, None, pattern_bytes(TINY + 1))
    corruptible.fleet.restart("edge2")
    await _scrubber_found(corruptible, "edge2", "the damaged row body")
    status, cache_status, body = await fetch(url, "/tiny-scrubbed")
    assert (status, body) == (200, pattern_bytes(TINY + 1))
    assert "hit" not in cache_status
    assert corruptible.origin.count("/tiny-scrubbed") == 2
