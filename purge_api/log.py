"""The durable purge log: SQLite in `data_dir`, committed before the API answers.

Each accepted purge gets the next sequence number; nodes apply purges in that order
and acknowledge by the highest number they have applied. The log also keeps every
node's acknowledgements (for status) and the highest sequence each node acknowledged
(so fan-out resumes where it was after a restart), and the Idempotency-Key of each
call (so a retried CI job gets its first purge back; a key reused for a different
purge is refused rather than answered with the first one's result).

The sqlite3 calls block, so the API runs them on one dedicated thread through
`PurgeLog.call` — one place, in plain sight, and one writer at a time.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from runtime.purge_wire import PurgeRecord, PurgeRequest

__all__ = ["Ack", "IdempotencyConflict", "LoggedPurge", "PurgeLog"]

P = ParamSpec("P")
R = TypeVar("R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS purges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    request TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    token TEXT NOT NULL,
    idempotency_key TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS purges_idempotency
    ON purges (token, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS acks (
    seq INTEGER NOT NULL,
    node TEXT NOT NULL,
    acked_at REAL NOT NULL,
    matched INTEGER,
    PRIMARY KEY (seq, node)
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    acked_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS matched (
    seq INTEGER NOT NULL,
    node TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (seq, node)
);
"""


class IdempotencyConflict(Exception):
    """An Idempotency-Key already used by this token for a different purge."""

    def __init__(self, earlier: LoggedPurge) -> None:
        self.earlier = earlier
        super().__init__(f"the key was used for purge {earlier.id}")


@dataclass(frozen=True)
class LoggedPurge:
    """One purge in the log; `to_wire()` is the record nodes receive."""

    seq: int
    id: str
    service: str
    request: PurgeRequest
    accepted_at: float
    token: str

    def to_wire(self) -> dict[str, object]:
        """The record as pushed to and pulled by nodes (docs/purge-api.md, node protocol)."""
        return PurgeRecord.of(
            self.seq, self.id, self.service, self.request, self.accepted_at
        ).to_json()


@dataclass(frozen=True)
class Ack:
    """One node's acknowledgement of one purge."""

    node: str
    acked_at: float
    matched: int | None


class PurgeLog:
    """The SQLite purge log. Sync methods; call them from the event loop via `call`."""

    def __init__(self, data_dir: str) -> None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(data_dir) / "purges.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL with synchronous=FULL: a commit is on disk when it returns, so a purge
        # the API has answered survives a crash of the process or the machine.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="purge-log")

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one of this log's methods on its thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        """Finish pending calls and close the database."""
        self._executor.shutdown(wait=True)
        self._db.close()

    # -- purges ---------------------------------------------------------------

    def append(
        self,
        service: str,
        request: PurgeRequest,
        token: str,
        idempotency_key: str | None,
        accepted_at: float,
    ) -> tuple[LoggedPurge, bool]:
        """Log a purge durably; (purge, True), or (the first purge, False) for a key seen before.

        IdempotencyConflict when the key was used before for another service or body: a
        replay must be the same call, or the second purge would be silently dropped.
        """
        if idempotency_key is not None:
            earlier = self._one("WHERE token = ? AND idempotency_key = ?", (token, idempotency_key))
            if earlier is not None:
                if earlier.service != service or earlier.request != request:
                    raise IdempotencyConflict(earlier)
                return earlier, False
        purge_id = uuid.uuid4().hex
        text = json.dumps(request.to_json())
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT INTO purges (id, service, request, accepted_at, token, idempotency_key)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (purge_id, service, text, accepted_at, token, idempotency_key),
            )
        seq = cursor.lastrowid
        assert seq is not None
        return LoggedPurge(seq, purge_id, service, request, accepted_at, token), True

    def get(self, purge_id: str) -> LoggedPurge | None:
        """The purge with this id, or None."""
        return self._one("WHERE id = ?", (purge_id,))

    def since(self, seq: int, limit: int, up_to: int) -> list[LoggedPurge]:
        """Purges with seq in (seq, up_to], oldest first, at most `limit`."""
        rows = self._db.execute(
            "SELECT seq, id, service, request, accepted_at, token FROM purges"
            " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (seq, up_to, limit),
        ).fetchall()
        return [_purge(row) for row in rows]

    def head(self) -> int:
        """The highest sequence number in the log (0 when empty)."""
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM purges").fetchone()
        return int(row[0])

    def _one(self, where: str, params: tuple[object, ...]) -> LoggedPurge | None:
        row = self._db.execute(
            "SELECT seq, id, service, request, accepted_at, token FROM purges " + where, params
        ).fetchone()
        return _purge(row) if row else None

    # -- acknowledgements -----------------------------------------------------

    def record_acks(
        self, node: str, acked_seq: int, acks: list[tuple[int, float, int | None]]
    ) -> None:
        """Store (seq, acked_at, matched) acks of `node` (a first ack is kept) and its seq."""
        # Acks are reports, not promises: after a crash a node is asked again and acks
        # again, so they need not wait for the disk (synchronous=NORMAL in WAL).
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR IGNORE INTO acks (seq, node, acked_at, matched) VALUES (?, ?, ?, ?)",
                    [(seq, node, at, matched) for seq, at, matched in acks],
                )
                self._db.execute(
                    "INSERT INTO nodes (name, acked_seq) VALUES (?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET acked_seq = excluded.acked_seq",
                    (node, acked_seq),
                )
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def record_matched(self, node: str, counts: list[tuple[int, int]]) -> None:
        """Store (seq, matched) counts `node` reported after its acks (the latest kept)."""
        # reports like acks: a lost one is only a number missing from a status
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO matched (seq, node, count) VALUES (?, ?, ?)"
                    " ON CONFLICT(seq, node) DO UPDATE SET count = excluded.count",
                    [(seq, node, count) for seq, count in counts],
                )
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def acks(self, seq: int) -> dict[str, Ack]:
        """Every node's ack of purge `seq`, by node name, with its count if it came."""
        rows = self._db.execute(
            "SELECT a.node, a.acked_at, COALESCE(a.matched, m.count) FROM acks AS a"
            " LEFT JOIN matched AS m ON m.seq = a.seq AND m.node = a.node WHERE a.seq = ?",
            (seq,),
        ).fetchall()
        return {node: Ack(node, acked_at, matched) for node, acked_at, matched in rows}

    def node_seqs(self) -> dict[str, int]:
        """The highest sequence each node has acknowledged."""
        rows = self._db.execute("SELECT name, acked_seq FROM nodes").fetchall()
        return {name: int(seq) for name, seq in rows}


def _purge(row: tuple[int, str, str, str, float, str]) -> LoggedPurge:
    seq, purge_id, service, text, accepted_at, token = row
    request = PurgeRequest.from_json(json.loads(text), "logged purge")
    return LoggedPurge(seq, purge_id, service, request, accepted_at, token)
