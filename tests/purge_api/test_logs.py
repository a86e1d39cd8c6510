"""One contract suite for the purge log, run against SQLite and against a real JetStream cluster.

Then what only a shared log does: two JetStream logs on one stream (two API
replicas) see each other's purges and acknowledgements, and agree on an
Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleet.config import Fleet, load_fleet
from purge_api.jetstream import JetStreamLog
from purge_api.log import IdempotencyConflict
from purge_api.logs import PurgeLogStore, SqliteLog
from runtime.purge_wire import PurgeRequest
from tests.support.nats_cluster import NatsCluster
from tests.support.waiting import eventually

_streams = itertools.count(1)


class Heard:
    """A LogListener that notes what it is told."""

    def __init__(self) -> None:
        self.appended_seqs: list[int] = []
        self.acked: dict[str, int] = {}

    def appended(self, seq: int) -> None:
        self.appended_seqs.append(seq)

    def node_acked(self, node: str, acked_seq: int) -> None:
        self.acked[node] = acked_seq


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A 3-server JetStream cluster shared by this module's tests (one stream each)."""
    nats = NatsCluster(tmp_path_factory.mktemp("nats")).start()
    try:
        yield nats
    finally:
        nats.stop()


def _fleet(tmp_path: Path, cluster: NatsCluster, stream: str) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[[regions]]\nname = "eu"\nlatitude = 1.0\nlongitude = 1.0\n'
        '[[services]]\nname = "site"\nhosts = ["www.example.com"]\n'
        'origins = ["http://127.0.0.1:9"]\n'
        f'[purge_api]\nlisten = "127.0.0.1:1"\ndata_dir = "{tmp_path / "api"}"\n'
        'log = "jetstream"\n' + cluster.toml(stream),
        encoding="utf-8",
    )
    return load_fleet(path)


@pytest.fixture(params=["sqlite", "jetstream"])
async def purge_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PurgeLogStore]:
    """A fresh, open log of each kind."""
    log: PurgeLogStore
    if request.param == "sqlite":
        log = SqliteLog(str(tmp_path / "api"))
    else:
        nats: NatsCluster = request.getfixturevalue("cluster")
        log = JetStreamLog(_fleet(tmp_path, nats, f"contract-{next(_streams)}"))
    await log.open(Heard())
    try:
        yield log
    finally:
        await log.close()


def _request(url: str) -> PurgeRequest:
    return PurgeRequest(urls=(url,))


async def test_appended_purges_get_consecutive_seqs_and_read_back(
    purge_log: PurgeLogStore,
) -> None:
    assert await purge_log.head() == 0
    first, created = await purge_log.append("site", _request("/a"), "ci", None, 10.0)
    second, _ = await purge_log.append("site", _request("/b"), "ci", None, 11.0)
    assert created and (first.seq, second.seq) == (1, 2)
    assert await purge_log.head() == 2
    assert await purge_log.get(second.id) == second
    assert await purge_log.get("0" * 32) is None
    assert await purge_log.since(0, 10, 2) == [first, second]
    assert await purge_log.since(0, 1, 2) == [first]
    assert await purge_log.since(1, 10, 1) == []


async def test_an_idempotency_key_replays_the_first_purge_and_refuses_another(
    purge_log: PurgeLogStore,
) -> None:
    first, created = await purge_log.append("site", _request("/a"), "ci", "key-1", 10.0)
    again, created_again = await purge_log.append("site", _request("/a"), "ci", "key-1", 99.0)
    assert created and not created_again
    assert again == first
    with pytest.raises(IdempotencyConflict) as conflict:
        await purge_log.append("site", _request("/other"), "ci", "key-1", 12.0)
    assert conflict.value.earlier.id == first.id
    # the same key of another token is another purge
    other, created_other = await purge_log.append("site", _request("/a"), "ops", "key-1", 13.0)
    assert created_other and other.id != first.id
    assert await purge_log.head() == 2


async def test_acks_are_kept_per_purge_and_node_with_counts(purge_log: PurgeLogStore) -> None:
    for path in ("/a", "/b", "/c"):
        await purge_log.append("site", _request(path), "ci", None, 10.0)
    await purge_log.record_acks("edge1", 2, [(1, 20.0, 5), (2, 20.0, None)])
    await purge_log.record_acks("edge1", 3, [(3, 30.0, None)])
    await purge_log.record_acks("shield1", 1, [(1, 15.0, None)])
    await purge_log.record_matched("edge1", [(2, 7)])
    assert await purge_log.node_seqs() == {"edge1": 3, "shield1": 1}
    acks = await purge_log.acks(1)
    assert sorted(acks) == ["edge1", "shield1"]
    assert (acks["edge1"].acked_at, acks["edge1"].matched) == (20.0, 5)
    assert acks["shield1"].acked_at == 15.0
    two = await purge_log.acks(2)
    assert list(two) == ["edge1"] and two["edge1"].matched == 7
    assert (await purge_log.acks(3))["edge1"].acked_at == 30.0


async def test_two_replicas_on_one_stream_see_each_others_purges_and_acks(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    fleet = _fleet(tmp_path, cluster, f"shared-{next(_streams)}")
    heard_a, heard_b = Heard(), Heard()
    a, b = JetStreamLog(fleet), JetStreamLog(fleet)
    await a.open(heard_a)
    await b.open(heard_b)
    try:
        purge, _ = await a.append("site", _request("/x"), "ci", None, 10.0)
        await eventually(lambda: purge.seq in heard_b.appended_seqs, "replica B hears the purge")
        assert await b.since(0, 10, purge.seq) == [purge]
        assert await b.get(purge.id) == purge
        await a.record_acks("edge1", purge.seq, [(purge.seq, 12.0, None)])
        await eventually(lambda: heard_b.acked.get("edge1") == purge.seq, "B hears the ack")
        assert (await b.acks(purge.seq))["edge1"].acked_at == 12.0
        # B records the next ack on top of A's (compare-and-set, nothing lost)
        second, _ = await b.append("site", _request("/y"), "ci", None, 13.0)
        await b.record_acks("edge1", second.seq, [(second.seq, 14.0, None)])
        await eventually(lambda: heard_a.acked.get("edge1") == second.seq, "A hears B's ack")
        assert (await a.acks(purge.seq))["edge1"].acked_at == 12.0
        # a key used on A is replayed by B with A's purge
        keyed, _ = await a.append("site", _request("/z"), "ci", "deploy-7", 15.0)
        replay, created = await b.append("site", _request("/z"), "ci", "deploy-7", 16.0)
        assert (replay, created) == (keyed, False)
    finally:
        await a.close()
        await b.close()


async def test_acks_and_counts_recorded_at_once_are_all_kept(purge_log: PurgeLogStore) -> None:
    # a node's matched reports arrive while its acks are being recorded
    for n in range(1, 21):
        await purge_log.append("site", _request(f"/{n}"), "ci", None, 10.0)
    await asyncio.gather(
        *(
            call
            for seq in range(1, 21)
            for call in (
                purge_log.record_acks("edge1", seq, [(seq, 100.0 + seq, None)]),
                purge_log.record_matched("edge1", [(seq, seq * 10)]),
            )
        )
    )
    assert await purge_log.node_seqs() == {"edge1": 20}
    for seq in range(1, 21):
        ack = (await purge_log.acks(seq))["edge1"]
        assert (ack.acked_at, ack.matched) == (100.0 + seq, seq * 10)


async def test_a_jetstream_log_taking_over_from_sqlite_numbers_on_after_its_head(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    # nodes ignore seqs at or below what they applied: the new log must continue
    old = SqliteLog(str(tmp_path / "api"))
    for path in ("/a", "/b", "/c"):
        await old.append("site", _request(path), "ci", None, 10.0)
    await old.close()
    fleet = _fleet(tmp_path, cluster, f"migrated-{next(_streams)}")
    log = JetStreamLog(fleet)
    await log.open(Heard())
    try:
        assert await log.head() == 3
        purge, _ = await log.append("site", _request("/d"), "ci", None, 11.0)
        assert purge.seq == 4
        assert await log.since(3, 10, 4) == [purge]
        assert await log.get(purge.id) == purge
    finally:
        await log.close()
    again = JetStreamLog(fleet)  # a replica started later reads the same numbering
    await again.open(Heard())
    try:
        assert await again.head() == 4
        assert [p.seq for p in await again.since(0, 10, 4)] == [4]
    finally:
        await again.close()


async def test_a_nodes_acks_entry_keeps_its_latest_history_only(
    cluster: NatsCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("purge_api.jetstream.ACK_HISTORY", 5)
    log = JetStreamLog(_fleet(tmp_path, cluster, f"history-{next(_streams)}"))
    await log.open(Heard())
    try:
        for seq in range(1, 13):
            await log.append("site", _request(f"/{seq}"), "ci", None, 10.0)
            await log.record_acks("edge1", seq, [(seq, 100.0 + seq, seq)])
        assert await log.node_seqs() == {"edge1": 12}
        assert (await log.acks(12))["edge1"].acked_at == 112.0
        assert (await log.acks(8))["edge1"].acked_at == 108.0
        # older than the history kept: acknowledged, no later than the oldest step
        old = (await log.acks(2))["edge1"]
        assert (old.acked_at, old.matched) == (108.0, None)
    finally:
        await log.close()
