"""Objects of a service with `durable_objects` reach stable storage before they count
as stored: the body file and its directory synced, the index row in a transaction
synced at its commit (SQLite's synchronous = FULL for that transaction only). Every
other object is stored without a sync, as before.

The syncs are watched for real: `os.fsync` calls through the interpreter's profile
hook, and the index's statements through SQLite's trace callback, on a store driven
on the test's own thread (`DiskIndex.install_many`, as the I/O gateway calls it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from edge.store.disk_index import DiskIndex
from edge.store.disk_layout import Install
from edge.store.interface import body_checksum
from tests.support.disk_lane import running_disk_edge

KiB = 1024
#: larger than a row keeps: the body goes to a file of its own
FILE_BODY = os.urandom(64 * KiB)
ROW_BODY = os.urandom(KiB)


@contextmanager
def opened_index(root: Path) -> Iterator[DiskIndex]:
    index = DiskIndex(str(root), str(root / "tmp"), 64 * KiB)
    index.start()
    try:
        yield index
    finally:
        index.close()


@contextmanager
def watched(index: DiskIndex) -> Iterator[tuple[list[object], list[str]]]:
    """The files and directories `os.fsync` was called on, and the SQL the index ran."""
    synced: list[object] = []
    statements: list[str] = []

    def profile(_frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and arg is os.fsync:
            synced.append(_frame.f_locals.get("path", "file"))

    connection = index.index._con
    connection.set_trace_callback(statements.append)
    previous: Callable[..., Any] | None = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield synced, statements
    finally:
        sys.setprofile(previous)
        connection.set_trace_callback(None)


def install(key: str, body: bytes, durable: bool, src: str = "") -> Install:
    data = body if not src else None
    return Install(key, src, "identity", "meta", len(body), body_checksum(body), data, durable)


def synchronous(index: DiskIndex) -> int:
    (value,) = index.index._sql("PRAGMA synchronous").fetchone()
    return int(value)


def test_a_durable_body_file_its_directory_and_its_commit_are_synced(tmp_path: Path) -> None:
    with opened_index(tmp_path) as index:
        before = synchronous(index)
        with watched(index) as (synced, statements):
            (result,) = index.install_many([install("big", FILE_BODY, durable=True)])
        assert not isinstance(result, OSError)
        # the body file as it is written, then the directory its name is in
        assert len(synced) == 2
        full = statements.index("PRAGMA synchronous = FULL")
        insert = next(n for n, sql in enumerate(statements) if sql.startswith("INSERT"))
        commit = next(n for n, sql in enumerate(statements) if sql.startswith("COMMIT"))
        assert full < insert < commit
        assert statements[-1] == f"PRAGMA synchronous = {before}"
        assert synchronous(index) == before == 1  # NORMAL for every other commit
        assert index.durable_commits == 1


def test_a_renamed_durable_body_is_synced_before_its_rename(tmp_path: Path) -> None:
    with opened_index(tmp_path) as index:
        src = tmp_path / "tmp" / "written.identity"
        src.write_bytes(FILE_BODY)
        with watched(index) as (synced, _statements):
            (result,) = index.install_many([install("big", FILE_BODY, True, str(src))])
        assert not isinstance(result, OSError)
        assert len(synced) == 2  # the temp file before its rename, then the directory
        assert not src.exists()
        assert index.durable_commits == 1


def test_a_durable_body_kept_in_its_row_is_synced_with_the_row(tmp_path: Path) -> None:
    with opened_index(tmp_path) as index:
        with watched(index) as (synced, statements):
            index.install_many([install("small", ROW_BODY, durable=True)])
        assert synced == []  # no file: the row is the body
        assert "PRAGMA synchronous = FULL" in statements
        assert index.durable_commits == 1


def test_objects_not_asked_to_be_durable_are_stored_without_a_sync(tmp_path: Path) -> None:
    with opened_index(tmp_path) as index:
        with watched(index) as (synced, statements):
            index.install_many(
                [install("big", FILE_BODY, durable=False), install("small", ROW_BODY, False)]
            )
        assert synced == []
        assert not any(sql.startswith("PRAGMA synchronous") for sql in statements)
        assert index.durable_commits == 0


def test_one_durable_object_makes_its_whole_batch_durable_once(tmp_path: Path) -> None:
    with opened_index(tmp_path) as index:
        with watched(index) as (synced, statements):
            index.install_many(
                [install("a", FILE_BODY, durable=True), install("b", ROW_BODY, durable=False)]
            )
        assert len(synced) == 2
        assert statements.count("PRAGMA synchronous = FULL") == 1
        assert index.durable_commits == 1
        assert index.row("a") is not None and index.row("b") is not None


async def test_a_fill_for_a_durable_service_commits_durably(tmp_path: Path) -> None:
    async with running_disk_edge(tmp_path / "on", durable_objects=True) as edge:
        edge.origin.responds("/d", cache_control="max-age=600", body=b"kept")
        assert (await edge.get("/d")).body == b"kept"
        assert edge.store.durable_commits == 1
        assert edge.engine.metrics.durable_commits.value == 1
    async with running_disk_edge(tmp_path / "off") as edge:
        edge.origin.responds("/d", cache_control="max-age=600", body=b"kept")
        assert (await edge.get("/d")).body == b"kept"
        assert edge.store.durable_commits == 0
        assert edge.engine.metrics.durable_commits.value == 0
