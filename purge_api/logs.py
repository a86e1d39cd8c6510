"""The purge log's one interface, and the choice between its two implementations.

`PurgeLogStore` is what the API and the fan-out use: append a purge (with its
Idempotency-Key), read it back by id or by sequence, and keep every node's
acknowledgements. Two logs implement it:

- `SqliteLog` (`[purge_api] log = "sqlite"`, the default): the SQLite `PurgeLog` of
  `purge_api.log` in `data_dir`, on its own thread; one API process per log.
- `JetStreamLog` (`log = "jetstream"`, `purge_api.jetstream`): a replicated NATS
  JetStream stream and key-value buckets, so any number of API replicas share it.

A log tells a `LogListener` of changes other processes made to it (a purge another
replica appended, acknowledgements another replica recorded), so every replica's
fan-out and `?wait=` see the same log. The SQLite log has no other writer and never
calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fleet.config import Fleet
from purge_api.log import Ack, LoggedPurge, PurgeLog
from runtime.purge_wire import PurgeRequest

__all__ = ["LogListener", "LogUnavailable", "PurgeLogStore", "SqliteLog", "open_log"]


class LogUnavailable(Exception):
    """The log cannot be reached now (a NATS cluster without quorum); try again later."""


class LogListener(Protocol):
    """Who hears of changes that other writers made to the log."""

    def appended(self, seq: int) -> None:
        """A purge with sequence `seq` is in the log."""

    def node_acked(self, node: str, acked_seq: int) -> None:
        """`node` has acknowledged every purge up to `acked_seq`."""


class PurgeLogStore(Protocol):
    """The purge log as the API and the fan-out use it; every method may raise LogUnavailable."""

    @property
    def description(self) -> str:
        """Where the log is, for the API's start-up line."""

    async def open(self, listener: LogListener) -> None:
        """Connect (or open the file); from now on tell `listener` of others' changes."""

    async def close(self) -> None:
        """Finish pending work and let go of the log."""

    async def append(
        self,
        service: str,
        request: PurgeRequest,
        token: str,
        idempotency_key: str | None,
        accepted_at: float,
    ) -> tuple[LoggedPurge, bool]:
        """Log a purge durably; (purge, True), or (the first purge, False) for a replayed key.

        IdempotencyConflict when the key was used before for another service or body.
        """

    async def get(self, purge_id: str) -> LoggedPurge | None:
        """The purge with this id, or None."""

    async def since(self, seq: int, limit: int, up_to: int) -> list[LoggedPurge]:
        """Purges with seq in (seq, up_to], oldest first, at most `limit`."""

    async def head(self) -> int:
        """The highest sequence number in the log (0 when empty)."""

    async def record_acks(
        self, node: str, acked_seq: int, acks: list[tuple[int, float, int | None]]
    ) -> None:
        """Store (seq, acked_at, matched) acks of `node` (a first ack is kept) and its seq."""

    async def record_matched(self, node: str, counts: list[tuple[int, int]]) -> None:
        """Store (seq, matched) counts `node` reported after its acks."""

    async def acks(self, seq: int) -> dict[str, Ack]:
        """Every node's ack of purge `seq`, by node name."""

    async def node_seqs(self) -> dict[str, int]:
        """The highest sequence each node has acknowledged."""


class SqliteLog:
    """The SQLite `PurgeLog` behind the async interface: each call on the log's thread."""

    def __init__(self, data_dir: str) -> None:
        self.log = PurgeLog(data_dir)

    @property
    def path(self) -> Path:
        """The database file."""
        return self.log.path

    @property
    def description(self) -> str:
        """The database file, for the start-up line."""
        return f"sqlite {self.log.path}"

    async def open(self, listener: LogListener) -> None:
        """Nothing to do: the file is open, and nobody else writes to it."""

    async def close(self) -> None:
        """Close the database."""
        self.log.close()

    async def append(
        self,
        service: str,
        request: PurgeRequest,
        token: str,
        idempotency_key: str | None,
        accepted_at: float,
    ) -> tuple[LoggedPurge, bool]:
        """See `PurgeLogStore.append`."""
        return await self.log.call(
            self.log.append, service, request, token, idempotency_key, accepted_at
        )

    async def get(self, purge_id: str) -> LoggedPurge | None:
        """See `PurgeLogStore.get`."""
        return await self.log.call(self.log.get, purge_id)

    async def since(self, seq: int, limit: int, up_to: int) -> list[LoggedPurge]:
        """See `PurgeLogStore.since`."""
        return await self.log.call(self.log.since, seq, limit, up_to)

    async def head(self) -> int:
        """See `PurgeLogStore.head`."""
        return await self.log.call(self.log.head)

    async def record_acks(
        self, node: str, acked_seq: int, acks: list[tuple[int, float, int | None]]
    ) -> None:
        """See `PurgeLogStore.record_acks`."""
        await self.log.call(self.log.record_acks, node, acked_seq, acks)

    async def record_matched(self, node: str, counts: list[tuple[int, int]]) -> None:
        """See `PurgeLogStore.record_matched`."""
        await self.log.call(self.log.record_matched, node, counts)

    async def acks(self, seq: int) -> dict[str, Ack]:
        """See `PurgeLogStore.acks`."""
        return await self.log.call(self.log.acks, seq)

    async def node_seqs(self) -> dict[str, int]:
        """See `PurgeLogStore.node_seqs`."""
        return await self.log.call(self.log.node_seqs)


def open_log(fleet: Fleet) -> PurgeLogStore:
    """The log `[purge_api] log` names (not yet opened: `await log.open(listener)`)."""
    assert fleet.purge_api is not None
    if fleet.purge_api.log == "jetstream":
        from purge_api.jetstream import JetStreamLog

        return JetStreamLog(fleet)
    return SqliteLog(fleet.purge_api.data_dir)
