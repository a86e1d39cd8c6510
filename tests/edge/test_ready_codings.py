"""Ready answers of compressible objects (edge/store/ready.py): one record holds the
answer in every coding the object has, made when its variants are added (not at its
commit, when its Vary is not settled), and a disk hit is written from the one
answer of the coding the request takes, as a hit from memory would choose it.

The record of several codings is attacked directly (a coding it has not, bodies that
are not its heads' codings, a torn table); the store's making of it through two
`DiskStore`s sharing one directory; and the HTTP/1.1 front's answer from it, per
Accept-Encoding, against the same hit answered from memory."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from pathlib import Path

import brotli

from edge.cache.model import ObjectMeta
from edge.store import DiskStore, MemoryStore
from edge.store.ready import (
    CODINGS,
    ReadyHead,
    ReadyRecord,
    coded_answer,
    encode_record,
    parse_record,
    parse_record_at,
)
from tests.support.disk_lane import DiskEdge
from tests.support.ready_store import (
    FRESH,
    TAG,
    encoded,
    fill_tier,
    meta,
    put,
    ready_edge,
    synced,
    two_workers,
)
from tests.support.waiting import eventually

KiB = 1024
#: bodies of an object in three codings (their bytes are opaque to the store)
BODIES = {"identity": b"plain body " * 10, "br": b"BR!", "gzip": b"GZIP body"}


def coded_fields(coding: str) -> bytes:
    """The fields a front would put before Content-Length for `coding`'s answer."""
    fields = b"Vary: Accept-Encoding\r\n"
    if coding != "identity":
        fields += b"Content-Encoding: %s\r\n" % coding.encode()
    return fields


def coded_head(codings: tuple[str, ...] = ("identity", "br", "gzip")) -> ReadyHead:
    """A ready head of an object with bodies in `codings`."""
    return ReadyHead(
        tuple((coding, coded_fields(coding)) for coding in codings), False, "edge1; ", 200, TAG
    )


def coded_maker(meta_: object, codings: tuple[str, ...], settled: bool) -> ReadyHead | None:
    """A maker as the front's: none for a compressible object not yet settled."""
    if isinstance(meta_, ObjectMeta) and meta_.compressible and not settled:
        return None
    return coded_head(codings)


def test_a_record_of_several_codings_answers_each_coding_alone() -> None:
    data = encode_record("k", coded_head(), meta(), BODIES)
    assert data is not None
    found = parse_record(data, b"k", TAG)
    assert found is not None and found.codings != b""
    assert found.coding_names() == ("identity", "br", "gzip")
    for coding, body in BODIES.items():
        one = coded_answer(found, coding)
        assert one is not None and one.codings == b""
        assert one.answer == coded_fields(coding) + b"Content-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
        assert one.body == body and one.body_length == len(body)
        # what a hit decides by is the record's, whatever the coding
        assert one[2:10] == found[2:10]
    assert coded_answer(found, "zstd") is None  # a coding it has no answer in
    assert coded_answer(found, "") is None
    plain = parse_record(encoded("k", b"hello"), b"k", TAG)
    assert plain is not None and plain.codings == b"" and plain.coding_names() == ("identity",)
    assert coded_answer(plain, "identity") is plain
    assert coded_answer(plain, "br") is None


def test_bodies_that_are_not_the_heads_codings_make_no_record() -> None:
    assert encode_record("k", coded_head(), meta(), {"identity": b"x", "br": b"y"}) is None
    three_others = {"identity": b"x", "br": b"y", "zstd": b"z"}
    assert encode_record("k", coded_head(), meta(), three_others) is None
    assert "x-custom" not in CODINGS
    custom = coded_head(("identity", "x-custom"))
    assert encode_record("k", custom, meta(), {"identity": b"x", "x-custom": b"y"}) is None


def test_a_torn_or_altered_table_of_codings_is_refused() -> None:
    """Every byte from the purge fields on altered, one at a time: the record is
    refused, or the answer holding the byte is, and no altered answer is served."""
    data = encode_record("k", coded_head(), meta(), BODIES)
    assert data is not None
    whole = parse_record(data, b"k", TAG)
    assert whole is not None
    answers = {coding: coded_answer(whole, coding) for coding in BODIES}
    table_at = data.index(b"edge1; ") + len(b"edge1; ")
    for at in range(table_at, len(data), 7):
        altered = bytearray(data)
        altered[at] ^= 0x04
        found = parse_record(bytes(altered), b"k", TAG)
        if found is None:
            continue
        served = {coding: coded_answer(found, coding) for coding in BODIES}
        assert None in served.values(), at
        for coding, one in served.items():
            assert one is None or one == answers[coding], (at, coding)
    assert parse_record(data[:-1], b"k", TAG) is None
    assert parse_record(data + b"\0", b"k", TAG) is None


def test_an_answer_overwritten_after_its_record_was_read_is_refused() -> None:
    """A hit reads the record, then the one answer it writes: another process's
    record written over that answer in between is not served, the others are."""
    data = encode_record("k", coded_head(), meta(), BODIES)
    assert data is not None
    ring = bytearray(data)
    found = parse_record_at(ring, 0, len(ring), b"k", TAG)  # type: ignore[arg-type]
    assert found is not None and found.answer == b""
    br_at = data.index(BODIES["br"])
    ring[br_at : br_at + 3] = b"new"
    assert coded_answer(found, "br") is None
    for coding in ("identity", "gzip"):
        one = coded_answer(found, coding)
        assert one is not None and one.body == BODIES[coding]


def tmp_body(store: DiskStore, coding: str, body: bytes) -> str:
    """A finished body file in the store's temp directory, as compression leaves one."""
    path = store.tmp_path("." + coding)
    Path(path).write_bytes(body)
    return path


async def test_adding_variants_makes_one_ready_answer_of_every_coding(tmp_path: Path) -> None:
    """No ready answer at the commit of a compressible object (its variants are on
    their way); one holding all three codings once they are added, in the same
    transaction, which the other worker finds too; a refresh makes it again with all
    of them."""
    async with two_workers(tmp_path) as (store, other):
        store.ready_maker = other.ready_maker = coded_maker
        await put(store, "k", BODIES["identity"], compressible=True)
        assert store.ready_answer("k", TAG) is None
        paths = {c: tmp_body(store, c, BODIES[c]) for c in ("br", "gzip")}
        added = await store.add_encodings("k", paths)
        assert added is not None and set(added) == {"br", "gzip"}
        assert not any(os.path.exists(path) for path in paths.values())
        found = store.ready_answer("k", TAG)
        assert found is not None and found.coding_names() == ("identity", "br", "gzip")
        for coding, body in BODIES.items():
            one = coded_answer(found, coding)
            assert one is not None and one.body == body
        await synced(other, "k")
        theirs = other.ready_answer("k", TAG)
        assert theirs is not None and theirs.answer == found.answer
        # a 304's refresh by the other: its new record has every coding (the codings
        # it most likely has, its memory tier holding nothing), the old one is dead
        await other.put_meta("k", meta(compressible=True, freshness_lifetime=9000.0))
        assert store.ready_answer("k", TAG) is None
        refreshed = other.ready_answer("k", TAG)
        assert refreshed is not None and refreshed.freshness_lifetime == 9000.0
        assert refreshed.coding_names() == ("identity", "br", "gzip")


async def test_no_variant_kept_still_settles_an_identity_answer(tmp_path: Path) -> None:
    """A compressible object whose variants were not worth keeping: adding none
    settles it, and its ready answer is identity alone."""
    async with two_workers(tmp_path) as (store, _other):
        store.ready_maker = coded_maker
        await put(store, "k", BODIES["identity"], compressible=True)
        assert store.ready_answer("k", TAG) is None
        assert await store.add_encodings("k", {}) == {}
        found = store.ready_answer("k", TAG)
        assert found is not None and found.codings == b""
        assert found.body == BODIES["identity"]


async def test_a_variant_too_large_for_a_record_leaves_the_object_without_one(
    tmp_path: Path,
) -> None:
    """A body kept in a file, not in the row, makes no ready answer: the old one is
    dead, and the object is answered through the index."""
    async with two_workers(tmp_path) as (store, _other):
        store.ready_maker = coded_maker
        await put(store, "k", b"x" * 100)
        assert store.ready_answer("k", TAG) is not None
        large = tmp_body(store, "br", os.urandom(64 * KiB))
        assert await store.add_encodings("k", {"br": large}) is not None
        assert store.ready_answer("k", TAG) is None
        entry = await store.get("k")
        assert entry is not None and set(entry.bodies) == {"identity", "br"}


async def test_variants_of_a_gone_object_are_removed(tmp_path: Path) -> None:
    async with two_workers(tmp_path) as (store, _other):
        path = tmp_body(store, "br", b"BR")
        assert await store.add_encodings("gone", {"br": path}) is None
        assert not os.path.exists(path)
        assert store.ready_answer("gone", TAG) is None


def json_body() -> bytes:
    """A JSON document of a few KiB that compresses well."""
    rows = [{"id": n, "name": f"item {n}", "tags": ["a", "b", "c"]} for n in range(60)]
    return json.dumps({"items": rows}).encode()


def decoded(coding: str | None, body: bytes) -> bytes:
    """`body` as sent in `coding`, decoded."""
    if coding == "br":
        return bytes(brotli.decompress(body))
    if coding == "gzip":
        return gzip.decompress(body)
    return body


async def stored_and_settled(edge: DiskEdge, path: str) -> str:
    """Fill `path` (a miss), then wait until its variants are settled and its ready
    answer written; its key."""
    assert (await edge.get(path)).status == 200
    key = edge.key(path)
    await eventually(
        lambda: (
            key not in edge.engine.filler.compressing
            and edge.store.ready_answer(key, TAG) is not None
        ),
        f"the settled ready answer of {path}",
        10,
    )
    return key


#: Accept-Encoding values, and the coding each is answered in
ACCEPTS = {
    None: None,
    "gzip": "gzip",
    "br": "br",
    "gzip, deflate, br": "br",
    "br;q=0.5, gzip": "gzip",
    "identity": None,
    "zstd": None,
    "identity;q=0, br": "br",
}


async def test_the_front_answers_a_compressible_object_in_each_coding_from_its_ready_answer(
    tmp_path: Path,
) -> None:
    async with ready_edge(tmp_path) as edge:
        body = json_body()
        edge.origin.responds(
            "/a.json", cache_control=FRESH, body=body, Content_Type="application/json"
        )
        assert (await edge.get("/a.json", Accept_Encoding="br")).status == 200
        key = edge.key("/a.json")

        def settled() -> bool:
            entry = edge.store.peek(key)
            return (
                key not in edge.engine.filler.compressing
                and entry is not None
                and set(entry.bodies) == {"identity", "br", "gzip"}
            )

        await eventually(settled, "the br and gzip variants", 10)
        edge.clock.advance(5)
        from_memory = {}
        for accept in ACCEPTS:
            headers = {"Accept_Encoding": accept} if accept is not None else {}
            from_memory[accept] = await edge.get("/a.json", **headers)
        edge.evict("/a.json")
        for accept, coding in ACCEPTS.items():
            headers = {"Accept_Encoding": accept} if accept is not None else {}
            fill_tier(edge)  # each read the first lately: not admitted to memory
            reads, lookups = edge.store.ready_reads, edge.store._inline.lookups
            disk_hits = edge.engine.hot.disk_hits
            ready = await edge.get("/a.json", **headers)
            assert edge.store.ready_reads == reads + 1, accept
            assert edge.store._inline.lookups == lookups, accept  # not the index
            assert edge.engine.hot.disk_hits == disk_hits + 1, accept
            assert ready.status == 200
            assert ready.headers.get("Content-Encoding") == coding, accept
            assert ready.headers["Vary"] == "Accept-Encoding"
            assert ready.headers["Content-Length"] == str(len(ready.body))
            assert decoded(coding, ready.body) == body
            # the same answer as the hit from memory: fields, coding and bytes
            assert ready.headers == from_memory[accept].headers, accept
            assert ready.body == from_memory[accept].body, accept
        assert edge.origin.count("/a.json") == 1


async def test_a_request_that_takes_none_of_the_codings_is_left_to_the_full_path(
    tmp_path: Path,
) -> None:
    async with ready_edge(tmp_path) as edge:
        body = json_body()
        edge.origin.responds(
            "/a.json", cache_control=FRESH, body=body, Content_Type="application/json"
        )
        await stored_and_settled(edge, "/a.json")
        edge.evict("/a.json")
        fill_tier(edge)
        disk_hits = edge.engine.hot.disk_hits
        refused = await edge.get("/a.json", Accept_Encoding="identity;q=0, zstd")
        assert edge.engine.hot.disk_hits == disk_hits  # the lane did not answer it
        # the full path's answer: the origin's own coding, as nothing is acceptable
        assert refused.status == 200 and "Content-Encoding" not in refused.headers
        assert refused.headers["Transfer-Encoding"] == "chunked"  # not the lane's framing
        assert body in refused.body and edge.origin.count("/a.json") == 1


async def test_a_compressible_object_not_worth_compressing_gets_an_identity_answer(
    tmp_path: Path,
) -> None:
    """Random bytes labelled JSON: neither variant is kept, and the object is still
    answered from a ready answer, identity alone and without Vary."""
    async with ready_edge(tmp_path) as edge:
        body = os.urandom(2 * KiB)
        edge.origin.responds(
            "/r.json", cache_control=FRESH, body=body, Content_Type="application/json"
        )
        key = await stored_and_settled(edge, "/r.json")
        record = edge.store.ready_answer(key, TAG)
        assert isinstance(record, ReadyRecord) and record.codings == b""
        edge.evict("/r.json")
        fill_tier(edge)
        disk_hits = edge.engine.hot.disk_hits
        ready = await edge.get("/r.json", Accept_Encoding="gzip, br")
        assert edge.engine.hot.disk_hits == disk_hits + 1
        assert ready.body == body and "Content-Encoding" not in ready.headers
        assert "Vary" not in ready.headers


async def test_variants_added_at_once_share_one_transaction_with_commits(
    tmp_path: Path,
) -> None:
    """Variants of many objects added at once go to the index in one batch, and
    each caller gets its own object's result, also when commits of other objects
    share the batch (commits are answered first: a mix-up would give a caller
    another object's row)."""
    for in_memory in (False, True):
        store = await DiskStore.open(
            str(tmp_path / str(in_memory)), 1 << 30, commit_inline=in_memory
        )
        store.ready_maker = coded_maker
        try:
            keys = [f"k{n}" for n in range(16)]
            for key in keys:
                await put(store, key, key.encode() * 40, compressible=True)
            batches = store.variant_batches
            paths = [{"br": tmp_body(store, "br", b"br of " + key.encode())} for key in keys]
            added = await asyncio.gather(
                *(store.add_encodings(key, p) for key, p in zip(keys, paths, strict=True)),
                put(store, "new", b"a new object"),
            )
            assert store.variant_batches - batches <= 2  # not one per object
            for key, result in zip(keys, added[:-1], strict=True):
                assert isinstance(result, dict) and result["br"].data == b"br of " + key.encode()
                found = store.ready_answer(key, TAG)
                assert found is not None and found.coding_names() == ("identity", "br")
                one = coded_answer(found, "br")
                assert one is not None and one.body == b"br of " + key.encode()
            entry = await store.get("new")
            assert entry is not None and entry.bodies["identity"].data == b"a new object"
        finally:
            await store.close()


async def test_variants_of_a_body_replaced_meanwhile_are_not_added(tmp_path: Path) -> None:
    """Variants made from the first body of an object that was stored again while
    they were made are another object's: they are not added (their files go), and
    the new object keeps its own bodies, and gets no ready answer of theirs."""
    async with two_workers(tmp_path) as (store, other):
        store.ready_maker = other.ready_maker = coded_maker
        await put(store, "k", b"first body " * 20, compressible=True)
        first = await store.get("k")
        assert first is not None
        source = first.bodies["identity"]
        await put(other, "k", b"second body " * 20, compressible=True)  # another worker
        path = tmp_body(store, "br", b"br of the first body")
        assert await store.add_encodings("k", {"br": path}, made_from=source) is None
        assert not os.path.exists(path)
        store.forget_cached("k")
        entry = await store.get("k")
        assert entry is not None and set(entry.bodies) == {"identity"}
        assert entry.bodies["identity"].data == b"second body " * 20
        assert other.ready_answer("k", TAG) is None
        # made from the body it has: added
        current = entry.bodies["identity"]
        path = tmp_body(store, "br", b"br of the second body")
        added = await store.add_encodings("k", {"br": path}, made_from=current)
        assert added is not None and added["br"].data == b"br of the second body"


async def test_the_memory_store_refuses_variants_of_a_replaced_body(tmp_path: Path) -> None:
    store = MemoryStore(1 << 20)
    writer = store.begin("k")
    await writer.write(b"first")
    first = await writer.commit(meta())
    writer = store.begin("k")
    await writer.write(b"second")
    await writer.commit(meta())
    path = str(tmp_path / "v.br")
    Path(path).write_bytes(b"br of first")
    assert await store.add_encodings("k", {"br": path}, first.bodies["identity"]) is None
    assert not os.path.exists(path)
