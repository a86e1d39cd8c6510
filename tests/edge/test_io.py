"""The I/O gateway is where a node's disk work runs.

Every file-system call Python audits (open, rename, unlink, mkdir, listdir, scandir,
rmtree, sqlite3.connect: PEP 578) is recorded with the name of the thread that made
it while a real `DiskStore`, the compressor and a fill's readers do their work in a
temp directory; each must come from one of the gateway's
threads, none from the event loop's thread or another pool, but for the one
exception by design: a disk hit of a small object (`edge.store.disk_inline`) reads
the index on a read-only connection of its own and opens the body for reading on
the event loop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.compress import make_variants
from edge.fill import Fill, FillHead, HeadKind
from edge.store import BodyRef, DiskStore, io, open_body, read_body
from edge.store.disk_inline import memory_backed

REPO = Path(__file__).resolve().parents[2]
KiB = 1024

#: audited events that name a file-system path as their first argument
FILE_EVENTS = frozenset(
    {
        "open",
        "os.rename",
        "os.remove",
        "os.mkdir",
        "os.rmdir",
        "os.listdir",
        "os.scandir",
        "os.chmod",
        "shutil.rmtree",
        "sqlite3.connect",
    }
)

#: (event, path, thread name) while a test records; None otherwise
_recorded: list[tuple[str, str, str]] | None = None
_root = ""
#: the flags each recorded `open` was made with (os.open's, or a file object's)
_flags: dict[str, int] = {}


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _recorded is None or event not in FILE_EVENTS or not args:
        return
    path = args[0]
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, str) and path.startswith(_root):
        _recorded.append((event, path, threading.current_thread().name))
        if event == "open" and len(args) > 2 and isinstance(args[2], int):
            _flags[path] = args[2]


sys.addaudithook(_audit)  # hooks cannot be removed; inert unless a test records


@pytest.fixture
def file_calls(tmp_path: Path) -> Iterator[list[tuple[str, str, str]]]:
    """The audited file-system calls under `tmp_path` made while the test runs."""
    global _recorded, _root
    _root, _recorded = str(tmp_path), []
    try:
        yield _recorded
    finally:
        _recorded = None


def off_the_gateway(calls: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [call for call in calls if not call[2].startswith(io.THREAD_PREFIX)]


async def test_every_disk_store_file_call_runs_on_the_gateway(
    tmp_path: Path, file_calls: list[tuple[str, str, str]]
) -> None:
    # a directory on a device (a memory filesystem's commits run on the loop)
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30, commit_inline=False)
    text = b"the same line again and again\n" * 20_000
    writer = store.begin("text")
    for pos in range(0, len(text), 50 * KiB):
        await writer.write(text[pos : pos + 50 * KiB])
    entry = await writer.commit("meta")
    aborted = store.begin("aborted")
    await aborted.write(b"x" * 100 * KiB)
    await aborted.abort()

    store.forget_cached("text")
    entry = await store.get("text")
    assert entry is not None
    body = entry.bodies["identity"]
    assert b"".join([c async for c in read_body(body)]) == text
    opened = await open_body(body)
    assert b"".join([c async for c in opened.chunks(0, body.size, 64 * KiB)]) == text
    await opened.close()
    assert set(await make_variants(store, "text", body, "text/plain")) == {"br", "gzip"}
    await store.put_meta("text", "meta 2")
    assert await store.scrub("text", rate=1 << 40) > 0
    assert [key for key, _ in await store.metas(await store.keys())] == ["text"]
    await store.delete("text")
    await store.close()

    events = {event for event, _, _ in file_calls}
    assert {"open", "os.rename", "os.remove", "sqlite3.connect"} <= events
    # the body is too large to be read inline: only the inline reader's connection,
    # made once, was opened on the loop (its lookup went on to the gateway)
    index = str(tmp_path / "cache" / "index" / "cache.db")
    assert [call[:2] for call in off_the_gateway(file_calls)] == [("sqlite3.connect", index)]


async def test_a_store_in_memory_commits_on_the_loop(
    tmp_path: Path, file_calls: list[tuple[str, str, str]]
) -> None:
    """On a memory filesystem (tmpfs) an index commit never waits on a device: the
    batch is written on the event loop, its body moved into place there too."""
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30, commit_inline=True)
    try:
        writer = store.begin("large")
        await writer.write(b"x" * 100 * KiB)  # a file body: moved into place at commit
        await writer.commit("meta")
        renames = [call for call in file_calls if call[0] == "os.rename"]
        assert renames and not [call for call in renames if call[2].startswith(io.THREAD_PREFIX)]
        store.forget_cached("large")
        entry = await store.get("large")
        assert entry is not None and entry.bodies["identity"].size == 100 * KiB
    finally:
        await store.close()


def test_a_store_commits_on_the_loop_only_on_a_memory_filesystem(tmp_path: Path) -> None:
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        kinds = {line.split()[1]: line.split()[2] for line in mounts if len(line.split()) > 2}
    checked = 0
    for point, kind in kinds.items():
        if kind in ("tmpfs", "ext4", "xfs", "btrfs", "overlay") and os.path.isdir(point):
            assert memory_backed(point) == (kind == "tmpfs"), point
            checked += 1
    assert checked > 0
    assert not memory_backed("/proc")


async def test_a_small_disk_hit_only_reads_on_the_loop(
    tmp_path: Path, file_calls: list[tuple[str, str, str]]
) -> None:
    # a body in a file of its own (one kept in its index row opens nothing at all)
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30, row_body_max=0)
    writer = store.begin("small")
    await writer.write(b"x" * KiB)
    entry = await writer.commit("meta")
    path = entry.bodies["identity"].path
    store.forget_cached("small")
    file_calls.clear()
    again = await store.get("small")
    assert again is not None and again.bodies["identity"].data == b"x" * KiB
    await store.close()
    index = str(tmp_path / "cache" / "index" / "cache.db")
    assert [call[:2] for call in off_the_gateway(file_calls)] == [
        ("sqlite3.connect", index),
        ("open", path),
    ]
    assert _flags[path] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) == 0


async def test_a_fill_reader_opens_and_reads_on_the_gateway(
    tmp_path: Path, file_calls: list[tuple[str, str, str]]
) -> None:
    path = tmp_path / "growing"
    body = os.urandom(300 * KiB)
    path.write_bytes(body)  # the test's own setup, on the loop: not counted below
    file_calls.clear()
    fill = Fill("k", started_at=0.0)
    fill.set_head(FillHead(HeadKind.STREAM), str(path))
    fill.progress(len(body))
    reader = asyncio.create_task(_read_fill(fill))
    committed = tmp_path / "committed"
    await io.run(os.rename, path, committed)
    fill.finish(BodyRef("identity", len(body), None, str(committed)))
    assert await reader == body

    opened = [call for call in file_calls if call[0] == "open"]
    assert any(call[1] == str(path) for call in opened)  # the fill's reader opened it
    assert off_the_gateway(file_calls) == []


async def _read_fill(fill: Fill) -> bytes:
    return b"".join([chunk async for chunk in fill.read()])


def test_a_forked_child_gets_a_gateway_of_its_own(tmp_path: Path) -> None:
    """A pool made before a fork has no threads in the child; the child makes its own."""
    script = textwrap.dedent(
        """
        import asyncio, os, sys, threading
        from edge.store import io

        def name():
            return threading.current_thread().name

        print(asyncio.run(io.run(name)), flush=True)  # the parent's pool exists now
        pid = os.fork()
        if pid == 0:
            try:
                print(asyncio.run(asyncio.wait_for(io.run(name), 20)), flush=True)
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (done.stdout, done.stderr, time.monotonic() - started)
    lines = done.stdout.split()
    assert len(lines) == 2
    assert all(line.startswith(io.THREAD_PREFIX) for line in lines)
