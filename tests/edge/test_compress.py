"""Stored br/gzip variants made at fill time, and the streaming decoder."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import brotli
import pytest

from edge.compress import (
    DECODE_PIECE,
    IN_MEMORY_MAX,
    DecodeError,
    DecodeLimit,
    StreamDecoder,
    make_variants,
)
from edge.store import BodyCorrupt, BodyRef, DiskStore, MemoryStore, ObjectStore, read_body

KiB = 1024
MiB = 1024 * KiB

WORDS = [b"cache", b"edge", b"shield", b"origin", b"purge", b"vary", b"stale", b"fresh"]


def text_body(size: int, seed: int = 1) -> bytes:
    """Compressible but not trivially repetitive text."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(WORDS, k=16)) + b"\n"
    return bytes(out[:size])


@pytest.fixture(params=["disk", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """Each store implementation (compression must not care which)."""
    made: ObjectStore
    if request.param == "disk":
        made = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30)
    else:
        made = MemoryStore(max_bytes=1 << 30, tmp_dir=str(tmp_path))
    yield made
    await made.close()


async def store_body(
    store: ObjectStore, key: str, body: bytes, encoding: str = "identity"
) -> BodyRef:
    writer = store.begin(key, encoding)
    for pos in range(0, len(body), 64 * KiB):
        await writer.write(body[pos : pos + 64 * KiB])
    entry = await writer.commit("meta")
    return entry.bodies[encoding]


async def read_all(ref: BodyRef) -> bytes:
    return b"".join([chunk async for chunk in read_body(ref)])


async def test_br_and_gzip_variants_decode_to_the_identity_body(store: ObjectStore) -> None:
    body = text_body(100 * KiB)
    source = await store_body(store, "k", body)
    added = await make_variants(store, "k", source, "application/json; charset=utf-8")
    assert set(added) == {"br", "gzip"}
    assert brotli.decompress(await read_all(added["br"])) == body
    assert gzip.decompress(await read_all(added["gzip"])) == body
    assert added["br"].size < len(body) * 0.5
    entry = await store.get("k")
    assert entry is not None
    assert set(entry.bodies) == {"identity", "br", "gzip"}
    assert entry.bodies["br"].size == added["br"].size


async def test_made_once_a_second_call_adds_nothing(store: ObjectStore) -> None:
    body = text_body(20 * KiB)
    source = await store_body(store, "k", body)
    assert set(await make_variants(store, "k", source, "text/html")) == {"br", "gzip"}
    assert await make_variants(store, "k", source, "text/html") == {}


async def test_incompressible_types_are_not_compressed(store: ObjectStore) -> None:
    body = text_body(50 * KiB)
    source = await store_body(store, "img", body)
    assert await make_variants(store, "img", source, "image/png") == {}
    assert await make_variants(store, "img", source, None) == {}
    entry = await store.get("img")
    assert entry is not None
    assert set(entry.bodies) == {"identity"}


async def test_a_variant_that_saves_under_five_percent_is_not_kept(
    store: ObjectStore, tmp_path: Path
) -> None:
    source = await store_body(store, "rand", os.urandom(64 * KiB))
    assert await make_variants(store, "rand", source, "text/plain") == {}
    entry = await store.get("rand")
    assert entry is not None
    assert set(entry.bodies) == {"identity"}
    if isinstance(store, DiskStore):
        assert os.listdir(store._tmp_dir) == [".lock"]  # no output left behind


async def test_origin_gzip_gets_identity_and_br(store: ObjectStore) -> None:
    body = text_body(200 * KiB, seed=2)
    source = await store_body(store, "k", gzip.compress(body), encoding="gzip")
    added = await make_variants(store, "k", source, "text/css")
    assert set(added) == {"identity", "br"}
    assert await read_all(added["identity"]) == body
    assert added["identity"].size == len(body)
    assert brotli.decompress(await read_all(added["br"])) == body
    entry = await store.get("k")
    assert entry is not None
    assert set(entry.bodies) == {"gzip", "identity", "br"}


async def test_origin_br_of_an_incompressible_type_still_gets_identity(store: ObjectStore) -> None:
    body = text_body(30 * KiB, seed=3)
    source = await store_body(store, "k", brotli.compress(body), encoding="br")
    added = await make_variants(store, "k", source, "application/octet-stream")
    assert set(added) == {"identity"}
    assert await read_all(added["identity"]) == body


async def test_a_corrupt_origin_coding_raises_and_stores_nothing(store: ObjectStore) -> None:
    source = await store_body(store, "k", gzip.compress(text_body(10 * KiB))[:-20], "gzip")
    with pytest.raises(DecodeError):
        await make_variants(store, "k", source, "text/plain")
    entry = await store.get("k")
    assert entry is not None
    assert set(entry.bodies) == {"gzip"}


async def test_a_damaged_source_makes_no_variants(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30)
    try:
        source = await store_body(store, "k", text_body(400 * KiB))
        assert source.path is not None
        with open(source.path, "r+b") as f:
            f.seek(1000)
            f.write(b"#")
        with pytest.raises(BodyCorrupt):
            await make_variants(store, "k", source, "text/plain")
        entry = await store.get("k")
        assert entry is not None and set(entry.bodies) == {"identity"}
    finally:
        await store.close()


async def test_a_gone_entry_gets_no_variants(store: ObjectStore) -> None:
    source = await store_body(store, "k", text_body(10 * KiB))
    await store.delete("k")
    assert await make_variants(store, "k", source, "text/plain") == {}


async def test_a_large_body_is_compressed_in_chunks(tmp_path: Path) -> None:
    store = await DiskStore.open(str(tmp_path / "cache"), max_bytes=1 << 30)
    try:
        body = text_body(8 * MiB, seed=4)
        source = await store_body(store, "big", body)
        digest = hashlib.sha256(body).hexdigest()
        del body
        tracemalloc.start()
        try:
            added = await make_variants(store, "big", source, "text/plain")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert set(added) == {"br", "gzip"}
        assert peak < 4 * MiB  # streamed: far below the 8 MiB body
        for enc in ("br", "gzip"):
            decoder = StreamDecoder(enc)
            h = hashlib.sha256()
            async for chunk in read_body(added[enc]):
                h.update(decoder.decode(chunk))
            h.update(decoder.flush())
            assert h.hexdigest() == digest, enc
    finally:
        await store.close()


# --------------------------------------------------------------------------- decoder


def decode_bytewise(encoding: str, coded: bytes) -> bytes:
    decoder = StreamDecoder(encoding)
    out = [decoder.decode(coded[i : i + 1]) for i in range(len(coded))]
    return b"".join(out) + decoder.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("br", brotli.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, as some servers send
        ("identity", lambda b: b),
    ],
)
def test_decoder_at_every_byte_boundary(encoding: str, encode: object) -> None:
    body = text_body(3000)
    assert callable(encode)
    coded = encode(body)
    assert decode_bytewise(encoding, coded) == body
    decoder = StreamDecoder(encoding)
    assert decoder.decode(coded) + decoder.flush() == body


def test_decoder_reads_every_gzip_member() -> None:
    coded = gzip.compress(b"one ") + gzip.compress(b"two") + b"\0\0\0"
    assert decode_bytewise("gzip", coded) == b"one two"


@pytest.mark.parametrize(
    ("encoding", "coded"),
    [
        ("gzip", gzip.compress(b"x" * 5000)[:-4]),
        ("br", brotli.compress(text_body(5000))[:-3]),
        ("deflate", zlib.compress(b"y" * 5000)[:-6]),
    ],
)
def test_a_truncated_stream_is_an_error_at_flush(encoding: str, coded: bytes) -> None:
    decoder = StreamDecoder(encoding)
    decoder.decode(coded)
    with pytest.raises(DecodeError):
        decoder.flush()


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate"])
def test_garbage_is_a_decode_error(encoding: str) -> None:
    decoder = StreamDecoder(encoding)
    with pytest.raises(DecodeError):
        decoder.decode(b"\xff\xfe this is not compressed at all \x00" * 4)
        decoder.flush()


def test_an_unknown_coding_is_refused() -> None:
    with pytest.raises(DecodeError):
        StreamDecoder("compress")


def test_an_empty_body_decodes_to_nothing() -> None:
    assert StreamDecoder("gzip").flush() == b""


@pytest.mark.parametrize(("encoding", "encode"), [("gzip", gzip.compress), ("br", brotli.compress)])
def test_highly_compressed_input_comes_out_in_bounded_pieces(encoding: str, encode: object) -> None:
    assert callable(encode)
    coded = encode(b"\0" * (16 * MiB))
    assert len(coded) < 64 * KiB
    decoder = StreamDecoder(encoding)
    pieces = list(decoder.iter_decode(coded))
    assert all(len(p) <= 2 * DECODE_PIECE for p in pieces)
    assert sum(len(p) for p in pieces) == 16 * MiB
    assert decoder.flush() == b""


@pytest.mark.parametrize(("encoding", "encode"), [("gzip", gzip.compress), ("br", brotli.compress)])
def test_a_decompression_bomb_stops_at_the_output_limit(encoding: str, encode: object) -> None:
    assert callable(encode)
    coded = encode(b"\0" * (16 * MiB))
    decoder = StreamDecoder(encoding, max_output=MiB)
    taken = 0
    with pytest.raises(DecodeLimit):
        for piece in decoder.iter_decode(coded):
            taken += len(piece)
    # it stopped within a piece of the limit, not after decoding everything
    assert MiB - 2 * DECODE_PIECE <= taken <= MiB


async def test_a_variant_is_not_made_past_the_decoded_limit(store: ObjectStore) -> None:
    coded = gzip.compress(b"\0" * (4 * MiB))
    source = await store_body(store, "bomb", coded, "gzip")
    with pytest.raises(DecodeLimit):
        await make_variants(store, "bomb", source, "text/plain", max_decoded=MiB)
    entry = await store.get("bomb")
    assert entry is not None and set(entry.bodies) == {"gzip"}  # nothing added
    if isinstance(store, DiskStore):
        assert os.listdir(store._tmp_dir) == [".lock"]  # no output left behind


class CountingTemps(DiskStore):
    """A disk store that counts the temp paths asked of it."""

    temps = 0

    def tmp_path(self, suffix: str = "") -> str:
        self.temps += 1
        return super().tmp_path(suffix)


@pytest.mark.parametrize("kind", ["text", "hex"])
async def test_a_small_body_held_in_memory_is_coded_without_temp_files(
    tmp_path: Path, kind: str
) -> None:
    """Variants of a body held in memory, of at most `IN_MEMORY_MAX` bytes, go to the
    store as bytes: no temp file is made, kept in the row when small (text), written
    into bodies/ when not (hex, whose br passes the row's bound); both decode back."""
    store = await CountingTemps.open(str(tmp_path / "cache"), max_bytes=1 << 30)
    assert isinstance(store, CountingTemps)
    try:
        body = text_body(8 * KiB) if kind == "text" else os.urandom(30 * KiB).hex().encode()
        assert len(body) <= IN_MEMORY_MAX
        source = await store_body(store, "k", body)
        assert source.data is not None
        temps = store.temps
        added = await make_variants(store, "k", source, "text/plain")
        assert store.temps == temps
        assert set(added) == {"br", "gzip"}
        assert brotli.decompress(await read_all(added["br"])) == body
        assert gzip.decompress(await read_all(added["gzip"])) == body
        store.forget_cached("k")
        entry = await store.get("k")
        assert entry is not None and set(entry.bodies) == {"identity", "br", "gzip"}
        in_row = entry.bodies["br"].path is None
        assert in_row == (kind == "text")
        assert brotli.decompress(await read_all(entry.bodies["br"])) == body
    finally:
        await store.close()
