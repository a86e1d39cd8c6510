"""The purge log on NATS JetStream: one replicated stream, two key-value buckets.

Any number of API replicas share it (`[purge_api] log = "jetstream"`, `[nats]`).

- The stream (`[nats] stream`, `num_replicas` copies kept by Raft) holds one message
  per purge on the subject `<stream>.purge.<id>`; its stream sequence number is the
  purge's `seq`, so the order nodes apply purges in is the stream's. A publish is
  answered once a majority of the servers have stored it, so a purge the API has
  answered survives the loss of any minority of the cluster (and of the replica
  that answered). `Nats-Msg-Id` is the purge id: a publish retried after a timeout
  is stored once (the stream's duplicate window).
- `<stream>-keys` maps sha256(token, Idempotency-Key) to the purge; the entry is
  created before the publish (create-if-absent, so two replicas racing on one key
  agree on one purge), and completed with its seq after. A replay that finds an
  entry without its seq (the first replica died in between) publishes that same
  purge, same id, itself.
- `<stream>-acks` holds two entries per node: its acknowledged seq with the recent
  steps by which it got there (each step: the seqs it covered and when), and its
  recent matched counts (apart, so a node's count reports never contend with its
  acks). Replicas update an entry by compare-and-set, and every replica watches the
  bucket, so acks recorded by one replica are seen by all (`?wait=` and status
  answered by any of them).

A replica follows the stream with an ordered consumer: it learns of purges other
replicas appended (to push them to nodes) and keeps the recent ones in memory, so
pushes and pulls rarely ask the servers for a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import sqlite3
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from fleet.config import Fleet, nats_creds_file
from purge_api.log import Ack, IdempotencyConflict, LoggedPurge
from purge_api.logs import LogListener, LogUnavailable
from runtime.purge_wire import PurgeRequest

__all__ = ["JetStreamLog"]

log = logging.getLogger("edgeshield.purge_api.jetstream")

R = TypeVar("R")

#: how long one log operation keeps retrying while the cluster elects a leader or a
#: client reconnects (a Raft election takes a few seconds)
RETRY_FOR = 15.0
#: recent purges a replica keeps in memory for pushes and pulls
RECENT_PURGES = 20_000
#: ack steps and matched counts kept per node in its acks entry: every ack rewrites
#: (and every replica decodes) the entry on the API's event loop, between the acks of
#: other nodes, so it stays small; the status of an older purge reports the oldest
#: step's time, when the node had acknowledged it already
ACK_HISTORY = 100
#: the stream's duplicate window, seconds: retried publishes within it are stored once
DUPLICATE_WINDOW = 600.0
#: seconds between the watchdog's looks at the followers
WATCHDOG_INTERVAL = 1.0
_OFFSET_KEY = "meta.offset"
_KEY_SAFE = re.compile(r"[-_=A-Za-z0-9]{1,200}")


@dataclass
class _NodeAcks:
    """One node's acks entry: acked seq, ack steps (from, to, at), matched counts."""

    acked_seq: int = 0
    steps: list[tuple[int, int, float]] = field(default_factory=list)
    matched: dict[int, int] = field(default_factory=dict)
    revision: int | None = None

    def to_bytes(self) -> bytes:
        """The entry as stored in the bucket (JSON)."""
        return json.dumps(
            {
                "acked_seq": self.acked_seq,
                "steps": self.steps,
                "matched": {str(s): n for s, n in self.matched.items()},
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes, revision: int | None) -> _NodeAcks:
        """An entry read from the bucket at `revision`; ValueError and kin if malformed."""
        item = json.loads(data)
        return cls(
            acked_seq=int(item["acked_seq"]),
            steps=[(int(a), int(b), float(t)) for a, b, t in item["steps"]],
            matched={int(s): int(n) for s, n in item["matched"].items()},
            revision=revision,
        )

    def trim(self) -> None:
        """Keep the latest ACK_HISTORY steps and counts (what is written, too)."""
        del self.steps[:-ACK_HISTORY]
        if len(self.matched) > ACK_HISTORY:
            self.matched = dict(sorted(self.matched.items())[-ACK_HISTORY:])

    def acked_at(self, seq: int) -> float | None:
        """When the node acknowledged `seq` (None: not yet).

        The step that covers it; older than the steps kept: the oldest step's time;
        a step lost to a race of replicas: the next step's time (no later than that).
        """
        if seq > self.acked_seq or not self.steps:
            return None
        for _first, last, at in self.steps:
            if seq <= last:
                return at
        return self.steps[-1][2]


class JetStreamLog:
    """The purge log on a JetStream cluster; see the module docstring."""

    def __init__(self, fleet: Fleet) -> None:
        if fleet.nats is None:
            raise ValueError(f"{fleet.source}: [purge_api] log = 'jetstream' needs [nats]")
        self.config = fleet.nats
        self.creds = nats_creds_file(fleet)
        self.stream = self.config.stream
        assert fleet.purge_api is not None
        self.data_dir = fleet.purge_api.data_dir
        self.offset = 0
        """The purge seq of stream message 0 (see `_ensure_offset`)."""
        self.subject_prefix = f"{self.stream}.purge"
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._keys: KeyValue | None = None
        self._acks: KeyValue | None = None
        # ("n", node): its acked seq and steps; ("m", node): its matched counts
        self._entries: dict[tuple[str, str], _NodeAcks] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._recent: OrderedDict[int, LoggedPurge] = OrderedDict()
        self._head = 0
        self._listener: LogListener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._acks_seen = 0  # the acks bucket's last revision the watcher delivered
        self._closing = False

    @property
    def description(self) -> str:
        """The stream and the servers, for the start-up line."""
        return f"jetstream {self.stream} on {', '.join(self.config.servers)}"

    # -- connecting -----------------------------------------------------------

    async def open(self, listener: LogListener) -> None:
        """Connect, create the stream and buckets if missing, and start following them."""
        self._listener = listener
        options: dict[str, Any] = {
            "servers": list(self.config.servers),
            "name": "edgeshield-purge-api",
            "connect_timeout": 2,
            "reconnect_time_wait": 0.25,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            "error_cb": self._nats_error,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
        }
        if self.creds:
            options["user_credentials"] = self.creds
        try:
            self._nc = await nats.connect(**options)
        except (OSError, nats.errors.Error) as exc:
            raise LogUnavailable(f"NATS at {', '.join(self.config.servers)}: {exc!r}") from None
        self._js = self._nc.jetstream(timeout=2.0)
        replicas = self.config.stream_replicas
        await self._retry(
            lambda: self._ensure_stream(replicas),
            "creating the stream",
        )
        self._keys = await self._retry(
            lambda: self._ensure_bucket(f"{self.stream}-keys", replicas), "creating the keys bucket"
        )
        self._acks = await self._retry(
            lambda: self._ensure_bucket(f"{self.stream}-acks", replicas), "creating the acks bucket"
        )
        self.offset = await self._retry(self._ensure_offset, "reading the log's offset")
        self._head = await self._retry(self._stream_head, "reading the stream's head")
        watched = asyncio.Event()
        self._followers = {
            "acks": asyncio.create_task(self._follow_acks(watched), name="purge-log-acks"),
            "stream": asyncio.create_task(self._follow_stream(), name="purge-log-stream"),
        }
        self._tasks = [asyncio.create_task(self._watchdog(), name="purge-log-watchdog")]
        async with asyncio.timeout(RETRY_FOR):
            await watched.wait()

    async def close(self) -> None:
        """Stop following and close the connection."""
        self._closing = True
        tasks = [*self._tasks, *self._followers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._followers = {}
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    async def _ensure_stream(self, replicas: int) -> None:
        js = self._jetstream()
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.subject_prefix}.*"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW,
            allow_direct=True,
        )
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)

    async def _ensure_bucket(self, bucket: str, replicas: int) -> KeyValue:
        js = self._jetstream()
        try:
            return await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket, history=1, replicas=replicas, storage=StorageType.FILE
                )
            )

    async def _stream_head(self) -> int:
        info = await self._jetstream().stream_info(self.stream)
        return int(info.state.last_seq) + self.offset

    async def _ensure_offset(self) -> int:
        """The purge seq of stream message 0: the SQLite log's head when this log replaced it.

        Nodes ignore purges at or below the seq they have applied, so a log that takes
        over from the SQLite one in `data_dir` numbers on from where that one stopped.
        Decided once, when the stream is new (create-if-absent: replicas agree).
        """
        keys = self._keys_bucket()
        try:
            entry = await keys.get(_OFFSET_KEY)
            assert entry.value is not None
            return int(entry.value)
        except nats.js.errors.KeyNotFoundError:
            pass
        info = await self._jetstream().stream_info(self.stream)
        offset = 0
        if int(info.state.last_seq) == 0:
            offset = await asyncio.to_thread(_sqlite_head, self.data_dir)
        try:
            await keys.create(_OFFSET_KEY, str(offset).encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await keys.get(_OFFSET_KEY)
            assert entry.value is not None
            return int(entry.value)
        if offset:
            log.info("purge log: continuing the SQLite log's numbering after seq %d", offset)
        return offset

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise LogUnavailable("the purge log is not open")
        return self._js

    async def _retry(self, operation: Callable[[], Awaitable[R]], what: str) -> R:
        """Run `operation`, retrying the errors of a cluster in transition, for RETRY_FOR s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR
        delay = 0.05
        while True:
            try:
                return await operation()
            except (nats.js.errors.NotFoundError, nats.js.errors.BadRequestError):
                raise  # answers about the data (no such key, a lost compare-and-set)
            except (nats.errors.Error, TimeoutError) as exc:
                # no responders, no stream response, timeouts, reconnecting: a cluster
                # electing a leader or a client moving to another server
                if self._closing or loop.time() + delay > deadline:
                    raise LogUnavailable(f"{what}: {exc!r}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("purge log: NATS: %r", exc)

    async def _disconnected(self) -> None:
        if not self._closing:
            log.warning("purge log: disconnected from NATS; reconnecting")

    async def _reconnected(self) -> None:
        assert self._nc is not None
        log.info("purge log: reconnected to NATS at %s", self._nc.connected_url)

    # -- purges ---------------------------------------------------------------

    async def append(
        self,
        service: str,
        request: PurgeRequest,
        token: str,
        idempotency_key: str | None,
        accepted_at: float,
    ) -> tuple[LoggedPurge, bool]:
        """See `PurgeLogStore.append`; the order of writes is in the module docstring."""
        purge = LoggedPurge(0, uuid.uuid4().hex, service, request, accepted_at, token)
        if idempotency_key is None:
            return await self._publish(purge), True
        key = "k." + hashlib.sha256(f"{token}\0{idempotency_key}".encode()).hexdigest()
        keys = self._keys_bucket()
        try:
            await self._retry(lambda: keys.create(key, _purge_bytes(purge)), "an idempotency key")
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await self._retry(lambda: keys.get(key), "an idempotency key")
            assert entry.value is not None
            earlier, seq = _purge_from_bytes(entry.value)
            if earlier.service != service or earlier.request != request:
                raise IdempotencyConflict(earlier) from None
            if seq is not None:
                return _with_seq(earlier, seq), False
            # the first replica died between the key and the publish: finish its work
            logged = await self._publish(earlier)
            await self._retry(lambda: keys.put(key, _purge_bytes(logged)), "an idempotency key")
            return logged, False
        logged = await self._publish(purge)
        await self._retry(lambda: keys.put(key, _purge_bytes(logged)), "an idempotency key")
        return logged, True

    async def _publish(self, purge: LoggedPurge) -> LoggedPurge:
        js = self._jetstream()
        subject = f"{self.subject_prefix}.{purge.id}"
        data = _purge_bytes(purge)
        ack = await self._retry(
            lambda: js.publish(subject, data, headers={"Nats-Msg-Id": purge.id}),
            "publishing a purge",
        )
        logged = _with_seq(purge, int(ack.seq) + self.offset)
        self._remember(logged)
        return logged

    async def get(self, purge_id: str) -> LoggedPurge | None:
        """See `PurgeLogStore.get`: the last message on the purge's own subject."""
        js = self._jetstream()
        subject = f"{self.subject_prefix}.{purge_id}"
        try:
            msg = await self._retry(
                lambda: js.get_msg(self.stream, subject=subject, direct=True), "reading a purge"
            )
        except nats.js.errors.NotFoundError:
            # a direct get may be answered by a replica behind the leader, which has
            # not yet got a purge just appended: the leader has the last word
            try:
                msg = await self._retry(
                    lambda: js.get_msg(self.stream, subject=subject), "reading a purge"
                )
            except nats.js.errors.NotFoundError:
                return None
        assert msg.data is not None and msg.seq is not None
        purge, _ = _purge_from_bytes(msg.data)
        return _with_seq(purge, int(msg.seq) + self.offset)

    async def since(self, seq: int, limit: int, up_to: int) -> list[LoggedPurge]:
        """See `PurgeLogStore.since`: from memory, else one message at a time."""
        js = self._jetstream()
        out: list[LoggedPurge] = []
        # seqs up to the offset were in the SQLite log this one took over from
        for number in range(max(seq, self.offset) + 1, min(up_to, self._head) + 1):
            if len(out) >= limit:
                break
            purge = self._recent.get(number)
            if purge is None:
                try:
                    msg = await self._retry(
                        functools.partial(
                            js.get_msg, self.stream, seq=number - self.offset, direct=True
                        ),
                        "reading purges",
                    )
                except nats.js.errors.NotFoundError:
                    # a server behind the leader (direct gets go to any replica):
                    # stop here; nodes apply in order and ask again from the gap
                    break
                assert msg.data is not None
                purge = _with_seq(_purge_from_bytes(msg.data)[0], number)
            out.append(purge)
        return out

    async def head(self) -> int:
        """See `PurgeLogStore.head`."""
        self._head = max(self._head, await self._retry(self._stream_head, "reading the head"))
        return self._head

    def _remember(self, purge: LoggedPurge) -> None:
        self._recent[purge.seq] = purge
        while len(self._recent) > RECENT_PURGES:
            self._recent.popitem(last=False)
        if purge.seq > self._head:
            self._head = purge.seq
            if self._listener is not None:
                self._listener.appended(purge.seq)

    async def _follow_stream(self) -> None:
        """Background: every purge appended after our head, by any replica, in order."""
        js = self._jetstream()
        while not self._closing:
            try:
                config = ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=self._head - self.offset + 1,
                )
                sub = await js.subscribe(
                    f"{self.subject_prefix}.*", ordered_consumer=True, config=config
                )
                async for msg in sub.messages:
                    seq = int(msg.metadata.sequence.stream) + self.offset
                    try:
                        purge, _ = _purge_from_bytes(msg.data)
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("purge log: message %d is not a purge: %r", seq, exc)
                        continue
                    self._remember(_with_seq(purge, seq))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the subscription is re-made from the head we have
                if not self._closing:
                    log.warning("purge log: following the stream: %r; again", exc)
                    await asyncio.sleep(0.5)

    # -- acknowledgements -----------------------------------------------------

    async def record_acks(
        self, node: str, acked_seq: int, acks: list[tuple[int, float, int | None]]
    ) -> None:
        """See `PurgeLogStore.record_acks`: a compare-and-set of the node's acks entry."""
        if not acks:
            return
        at = min(a for _, a, _ in acks)

        def change(entry: _NodeAcks) -> bool:
            if acked_seq <= entry.acked_seq:
                return False  # another replica recorded it first: its time is kept
            entry.steps.append((entry.acked_seq, acked_seq, at))
            entry.acked_seq = acked_seq
            return True

        await self._update(("n", node), change)
        counts = [(seq, n) for seq, _, n in acks if n is not None]
        if counts:
            await self.record_matched(node, counts)

    async def record_matched(self, node: str, counts: list[tuple[int, int]]) -> None:
        """See `PurgeLogStore.record_matched`: the node's matched entry, apart from its acks."""
        if not counts:
            return

        def change(entry: _NodeAcks) -> bool:
            entry.matched.update(dict(counts))
            return True

        await self._update(("m", node), change)

    async def acks(self, seq: int) -> dict[str, Ack]:
        """See `PurgeLogStore.acks`: from the entries this replica watches."""
        out = {}
        for (kind, node), entry in list(self._entries.items()):
            if kind != "n":
                continue
            at = entry.acked_at(seq)
            if at is not None:
                counts = self._entries.get(("m", node))
                out[node] = Ack(node, at, counts.matched.get(seq) if counts else None)
        return out

    async def node_seqs(self) -> dict[str, int]:
        """See `PurgeLogStore.node_seqs`."""
        return {node: e.acked_seq for (kind, node), e in self._entries.items() if kind == "n"}

    async def _update(self, ident: tuple[str, str], change: Callable[[_NodeAcks], bool]) -> None:
        """Apply `change` to an entry by compare-and-set, rereading it on a conflict.

        One update of an entry at a time in this replica: the servers check the
        expected revision, and writes of one process need not race each other there.
        """
        bucket = self._acks_bucket()
        key = _entry_key(*ident)
        async with self._locks.setdefault(ident, asyncio.Lock()):
            for _ in range(20):
                current = self._entries.get(ident, _NodeAcks())
                entry = _NodeAcks(
                    current.acked_seq, list(current.steps), dict(current.matched), current.revision
                )
                if not change(entry):
                    return
                entry.trim()
                data = entry.to_bytes()
                write: Callable[[], Awaitable[int]] = (
                    functools.partial(bucket.create, key, data)
                    if entry.revision is None
                    else functools.partial(bucket.update, key, data, last=entry.revision)
                )
                try:
                    revision = await self._retry(write, "an ack")
                except nats.js.errors.KeyWrongLastSequenceError:
                    await self._reread(ident)
                    continue
                entry.revision = revision
                self._take(ident, entry)
                return
        raise LogUnavailable(f"acks of {ident[1]}: too many concurrent updates")

    async def _reread(self, ident: tuple[str, str]) -> None:
        bucket = self._acks_bucket()
        try:
            found = await self._retry(lambda: bucket.get(_entry_key(*ident)), "an ack")
        except nats.js.errors.KeyNotFoundError:
            return
        if found.value is None:
            return
        try:
            entry = _NodeAcks.from_bytes(found.value, found.revision)
        except (ValueError, KeyError, TypeError):
            entry = _NodeAcks(revision=found.revision)  # unreadable: written anew
        self._take(ident, entry)

    def _take(self, ident: tuple[str, str], entry: _NodeAcks) -> None:
        """Keep the newer of the entry we have and `entry`; tell the listener of progress."""
        current = self._entries.get(ident)
        if current is not None and (current.revision or 0) >= (entry.revision or 0):
            return
        self._entries[ident] = entry
        kind, node = ident
        if kind != "n" or self._listener is None:
            return
        if current is None or entry.acked_seq > current.acked_seq:
            self._listener.node_acked(node, entry.acked_seq)

    async def _follow_acks(self, watched: asyncio.Event) -> None:
        """Background: every node's acks entry as any replica changes it."""
        bucket = self._acks_bucket()
        while not self._closing:
            try:
                watcher = await bucket.watchall()
                async for update in watcher:
                    if update is None:  # the current values have all been delivered
                        watched.set()
                        continue
                    self._acks_seen = max(self._acks_seen, int(update.revision or 0))
                    ident = _entry_ident(update.key)
                    if ident is None or not update.value:
                        continue
                    known = self._entries.get(ident)
                    if known is not None and (known.revision or 0) >= (update.revision or 0):
                        continue  # our own write, taken already: no need to decode it
                    try:
                        entry = _NodeAcks.from_bytes(update.value, update.revision)
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("purge log: acks entry %s unreadable: %r", update.key, exc)
                        continue
                    self._take(ident, entry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closing:
                    log.warning("purge log: watching acks: %r; again", exc)
                    await asyncio.sleep(0.5)

    async def _watchdog(self) -> None:
        """Background: restart a follower that fell silent while its stream moved on.

        A follower's consumer lives on one server; when that server is lost the
        client library does not always notice, so once a second the log compares
        each stream's last sequence with what its follower delivered, and a follower
        behind twice in a row is started again (the stream's from our head, the
        acks' from the bucket's current values).
        """
        js = self._jetstream()
        behind = {"stream": 0, "acks": 0}
        while not self._closing:
            await asyncio.sleep(WATCHDOG_INTERVAL)
            try:
                stream_head = await self._stream_head()
                acks_info = await js.stream_info(f"KV_{self.stream}-acks")
            except (nats.errors.Error, TimeoutError):
                continue  # the cluster is electing: the next round sees it
            lag = {
                "stream": stream_head > self._head,
                "acks": int(acks_info.state.last_seq) > self._acks_seen,
            }
            for name, is_behind in lag.items():
                behind[name] = behind[name] + 1 if is_behind else 0
                if behind[name] >= 2:
                    behind[name] = 0
                    log.warning("purge log: the %s follower fell behind; starting it again", name)
                    self._restart(name)

    def _restart(self, name: str) -> None:
        self._followers[name].cancel()
        task = self._follow_stream() if name == "stream" else self._follow_acks(asyncio.Event())
        self._followers[name] = asyncio.create_task(task, name=f"purge-log-{name}")

    def _keys_bucket(self) -> KeyValue:
        if self._keys is None:
            raise LogUnavailable("the purge log is not open")
        return self._keys

    def _acks_bucket(self) -> KeyValue:
        if self._acks is None:
            raise LogUnavailable("the purge log is not open")
        return self._acks


def _entry_key(kind: str, node: str) -> str:
    """An entry's bucket key: kind, then the node name (as hex if it has other characters)."""
    return f"{kind}.{node}" if _KEY_SAFE.fullmatch(node) else f"{kind}x.{node.encode().hex()}"


def _entry_ident(key: str) -> tuple[str, str] | None:
    kind, _, name = key.partition(".")
    if kind in ("n", "m"):
        return kind, name
    if kind in ("nx", "mx"):
        with contextlib.suppress(ValueError):
            return kind[0], bytes.fromhex(name).decode()
    return None


def _sqlite_head(data_dir: str) -> int:
    """The head of the SQLite purge log in `data_dir`, or 0 if there is none."""
    path = Path(data_dir) / "purges.sqlite3"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM purges").fetchone()
    return int(row[0])


def _purge_bytes(purge: LoggedPurge) -> bytes:
    return json.dumps(
        {
            "id": purge.id,
            "seq": purge.seq or None,
            "service": purge.service,
            "request": purge.request.to_json(),
            "accepted_at": purge.accepted_at,
            "token": purge.token,
        },
        separators=(",", ":"),
    ).encode()


def _purge_from_bytes(data: bytes) -> tuple[LoggedPurge, int | None]:
    item = json.loads(data)
    request = PurgeRequest.from_json(item["request"], "logged purge")
    seq = item.get("seq")
    purge = LoggedPurge(
        int(seq or 0),
        str(item["id"]),
        str(item["service"]),
        request,
        float(item["accepted_at"]),
        str(item["token"]),
    )
    return purge, (int(seq) if seq else None)


def _with_seq(purge: LoggedPurge, seq: int) -> LoggedPurge:
    return LoggedPurge(seq, purge.id, purge.service, purge.request, purge.accepted_at, purge.token)
