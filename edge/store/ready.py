"""Ready answers: a small object's HTTP/1.1 answer kept whole on disk, so that a hit
on an object outside the memory tier is one `pread`, not an index lookup.

A hit on a stored object the memory tier does not hold used to cost about 40 µs of
CPU more than a memory hit: an SQL lookup in an index of 10^6 rows, the row decoded,
an entry and an answer built for an object read once (docs/benchmarks.md, "The floor
under a hit over a large store"). nginx keeps each object's location in memory (its
keys_zone) and the stored answer ready on disk. So does this module:

- when an object is stored, its answer (the HTTP/1.1 head less the fields set per
  response, and the body) goes into one record of the store's ring file,
  `ready/answers`, written under the index's writer lock in the transaction that
  writes its row, and the row keeps the record's location (`loc`);
- every process sharing the directory learns the location with the key (at open,
  and from the rows it syncs), and keeps it in its recency list beside the size;
- a hit reads the record with one `pread` and checks it: its key, a checksum over
  all of it but the first byte, and that first byte, the "dead" mark. Whoever
  replaces or deletes an object marks its record dead in the same transaction
  (`ReadyRing.kill`), so another process holding the old location finds it dead
  at once, without a lookup, and takes the index path instead.

An object with several codings (a compressible one, with its br and gzip variants)
has one record holding its answer in each, made when its variants are added
(`DiskIndex.add_variants_many`), not at its commit: until then its answer's Vary is not
settled. A hit takes the one answer of the coding the request takes
(`coded_answer`), chosen as for a hit from memory (`choose_encoding`).

The ring wraps when full: the oldest records are overwritten, and the objects they
belonged to fall back to the index path (a record overwritten in part or whole
fails its key or checksum). Records are never synced: one lost in a power cut is
found damaged and costs the index path once, never a wrong answer. The record
carries the freshness and purge fields a hit needs, so the lane decides with the
same arithmetic as every other path (`ObjectMeta.age`, `PurgeRules.verdict`).

This module is the record format and the ring file; it knows nothing of HTTP
beyond bytes handed to it (the head is made by the front: edge.front.h1_hits).
"""

from __future__ import annotations

import contextlib
import marshal
import mmap
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import xxhash

from edge.store.interface import KiB, MiB

__all__ = [
    "CODED_SIZE",
    "CODINGS",
    "READY_BODY_MAX",
    "READY_RING_MAX",
    "READY_RING_MIN",
    "ReadyHead",
    "ReadyRecord",
    "ReadyRing",
    "coded_answer",
    "encode_record",
    "parse_record",
    "parse_record_at",
    "ring_capacity",
]

#: the largest body kept in a ready answer (the bodies kept in index rows)
READY_BODY_MAX = 16 * KiB
#: the ring file's bounds: a quarter of `cache_size`, within these
READY_RING_MIN = 16 * MiB
READY_RING_MAX = 4 * 1024 * MiB
#: bytes at the start of the ring: its write position, then nothing
RING_START = 4096
#: bits of a location that hold the record's length (the rest: its offset)
LENGTH_BITS = 20
LENGTH_MASK = (1 << LENGTH_BITS) - 1
#: dead mark, magic, checksum of what follows it, the maker's tag, the lengths of
#: key, Cache-Status prefix, purge fields, head and body, status, whether the head
#: has its own Date, then response_time, corrected_initial_age,
#: freshness_lifetime and stored_at (`ObjectMeta`), and the length of the codings'
#: table (0 for a record of one identity answer: its head and body are the two
#: lengths before; else they are 0 and the length of all the answers, and the
#: table after the purge fields says which coding each answer is: `_CODED`).
#: The checksum covers all that follows it in a record of one answer; in a record
#: of several, all up to the answers, each answer having its own in the table, so
#: that a hit copies and checks the one answer it writes, not all of them
_FIXED = struct.Struct("<B3sQIHHHIIHBddddH")
#: the same in two: what the checksum does not cover, and what it does
_FIXED_START = struct.Struct("<B3sQ")
_FIXED_REST = struct.Struct("<IHHHIIHBddddH")
#: one answer of a record of several codings, in the order of the answers: the
#: coding (its place in `CODINGS`), the lengths of its head and of its body, and
#: the checksum of the two
_CODED = struct.Struct("<BIIQ")
CODED_SIZE = _CODED.size
#: the codings a record of several answers can hold
CODINGS = ("identity", "br", "gzip", "deflate", "zstd")
_CODING_NUMBERS = {name: n for n, name in enumerate(CODINGS)}
_FIXED_SIZE = _FIXED.size
#: bytes the checksum does not cover (dead mark, magic, checksum), and where the key
#: starts in what it does
_UNCHECKED = _FIXED_START.size
_CHECKED_KEY = _FIXED_SIZE - _UNCHECKED
#: the same as read back: the dead mark and the magic as one number (`_LIVE`)
_unpack_fixed = struct.Struct("<IQIHHHIIHBddddH").unpack_from
_xxh3 = xxhash.xxh3_64_intdigest
#: madvise(2)'s MADV_POPULATE_READ (Linux 5.14), which this Python may not name
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_new_tuple = tuple.__new__
_MAGIC = b"RA3"
_ALIVE = 0
#: the first four bytes of a live record, read as a little-endian number
_LIVE = int.from_bytes(bytes((_ALIVE,)) + _MAGIC, "little")
_DEAD = b"\x01"
_POSITION = struct.Struct("<Q")


def ring_capacity(max_bytes: int) -> int:
    """The ring's size for a store of `max_bytes`: a quarter of it, within bounds."""
    return max(READY_RING_MIN, min(READY_RING_MAX, max_bytes // 4))


@dataclass(frozen=True, slots=True)
class ReadyHead:
    """What a front makes of a stored object for its ready answer (edge.front.h1_hits):
    the head of each coding's answer less the status line, the per-response fields
    and Content-Length, and what those need."""

    #: (coding, its head's fields): one answer per coding the object has, in the
    #: order its bodies are stored. Each head is the fields before Content-Length, each line
    #: CRLF-terminated: the record adds Content-Length and the blank line, then the
    #: body, so that an answer is the status line and the per-response fields, then
    #: one slice of the record
    heads: tuple[tuple[str, bytes], ...]
    #: whether the heads carry the origin's own Date (else one is added per response)
    has_date: bool
    #: Cache-Status value before this hit's own member ("upstream, node; ")
    status_prefix: str
    status: int
    #: who made it (`edge.front.h1_hits.maker_tag`): a record of another node name,
    #: or another release's head, is not used
    tag: int

    @property
    def codings(self) -> tuple[str, ...]:
        """The codings it has a head for, in its order."""
        return tuple(coding for coding, _fields in self.heads)


class ReadyRecord(NamedTuple):
    """A ready answer read back and checked: what a hit writes, and what it decides by.

    A named tuple, made in one C call (`parse_record`): one is made for every disk
    hit. A record of several codings (`codings` not empty) is answered through
    `coded_answer`, which reads and checks the one answer of the coding a request
    takes."""

    #: the stored head (`ReadyHead.heads`, with Content-Length) and the body after
    #: it; for a record of several codings, every answer, one after the other
    answer: bytes
    body_length: int
    status: int
    has_date: bool
    status_prefix: str
    response_time: float
    corrected_initial_age: float
    freshness_lifetime: float
    stored_at: float
    #: (service, host, target, surrogate keys), marshalled (`purge_fields`)
    purge: bytes
    #: b"" for one identity answer; else the table of its answers (`_CODED` each),
    #: which are read from `source` (`coded_answer`), `answer` being empty
    codings: bytes = b""
    #: a record of several answers: what it was read from (the ring mapped, or the
    #: bytes read), and where its answers start there
    source: bytes | mmap.mmap | None = None
    answers_at: int = 0

    @property
    def body(self) -> bytes:
        """The stored body (a copy: the answer is written whole)."""
        return self.answer[len(self.answer) - self.body_length :]

    def age(self, now: float) -> float:
        """RFC 9111 4.2.3 current_age at `now`, as `ObjectMeta.age` computes it."""
        return self.corrected_initial_age + max(0.0, now - self.response_time)

    def purge_fields(self) -> tuple[str, str, str, tuple[str, ...]]:
        """(service, host, target, surrogate keys): what a purge rule matches on."""
        service, host, target, keys = marshal.loads(self.purge)
        return service, host, target, tuple(keys)

    def coding_names(self) -> tuple[str, ...]:
        """The codings of its answers, in its order."""
        if not self.codings:
            return ("identity",)
        return tuple(CODINGS[number] for number, *_lengths in _CODED.iter_unpack(self.codings))


def coded_answer(record: ReadyRecord, coding: str) -> ReadyRecord | None:
    """The record of `coding`'s answer alone (as a record of one answer is read), or
    None when `record` has no answer in that coding, or that answer fails its
    checksum (overwritten since the record was read, or damaged)."""
    if not record.codings:
        return record if coding == "identity" else None
    wanted = _CODING_NUMBERS.get(coding)
    source = record.source
    start = record.answers_at
    for number, head_length, body_length, checksum in _CODED.iter_unpack(record.codings):
        end = start + head_length + body_length
        if number == wanted:
            if source is None:
                return None
            answer = source[start:end]
            if len(answer) != end - start or _xxh3(answer) != checksum:
                return None
            # `_replace`, in one C call: this runs on every disk hit of such an object
            return _new_tuple(ReadyRecord, (answer, body_length, *record[2:10], b"", None, 0))
        start = end
    return None


#: the largest key, Cache-Status prefix and purge fields a record holds (its fields'
#: widths); an object with a longer one (a hostile origin's thousands of surrogate
#: keys) is stored without a ready answer
_SHORT_MAX = 0xFFFF


def encode_record(
    key: str, ready: ReadyHead, meta: object, bodies: Mapping[str, bytes]
) -> bytes | None:
    """The ready answer of `key` (its `meta` an `ObjectMeta`, its `bodies` by coding)
    as the ring stores it; None when the bodies are not the codings `ready` has
    heads for, or a field does not fit its width (`_SHORT_MAX`, a coding outside
    `CODINGS`, or a record longer than a location can say)."""
    from edge.cache.model import ObjectMeta

    assert isinstance(meta, ObjectMeta)
    if len(bodies) != len(ready.heads) or any(coding not in bodies for coding in ready.codings):
        return None
    key_bytes = key.encode("utf-8", "surrogateescape")
    prefix = ready.status_prefix.encode("utf-8", "surrogateescape")
    purge = marshal.dumps((meta.service, meta.host, meta.target, tuple(meta.surrogate_keys)))
    answers: list[bytes] = []
    table: list[bytes] = []
    for coding, fields in ready.heads:
        number = _CODING_NUMBERS.get(coding)
        if number is None:
            return None
        body = bodies[coding]
        head = b"%sContent-Length: %d\r\n\r\n" % (fields, len(body))
        answers += (head, body)
        answer_checksum = xxhash.xxh3_64(head)
        answer_checksum.update(body)
        table.append(_CODED.pack(number, len(head), len(body), answer_checksum.intdigest()))
    if ready.codings == ("identity",):
        table = []  # one identity answer: said by the lengths alone
        head_length, body_length = len(answers[0]), len(answers[1])
    else:
        head_length, body_length = 0, sum(len(part) for part in answers)
    codings = b"".join(table)
    if max(len(key_bytes), len(prefix), len(purge), len(codings)) > _SHORT_MAX or (
        _FIXED.size
        + len(key_bytes)
        + len(prefix)
        + len(purge)
        + len(codings)
        + head_length
        + body_length
        > LENGTH_MASK
    ):
        return None
    rest = _FIXED_REST.pack(
        ready.tag,
        len(key_bytes),
        len(prefix),
        len(purge),
        head_length,
        body_length,
        ready.status,
        1 if ready.has_date else 0,
        meta.response_time,
        meta.corrected_initial_age,
        meta.freshness_lifetime,
        meta.stored_at,
        len(codings),
    )
    parts = (rest, key_bytes, prefix, purge, codings, *answers)
    checksum = xxhash.xxh3_64()
    # a record of several answers: each answer has its own checksum in the table
    for part in parts if not codings else parts[:5]:
        checksum.update(part)
    return b"".join((_FIXED_START.pack(_ALIVE, _MAGIC, checksum.intdigest()), *parts))


def parse_record(data: bytes, key: bytes, tag: int) -> ReadyRecord | None:
    """The record in `data` if it is alive, whole, of `key` and made by `tag`'s maker;
    None for anything else (dead, overwritten, torn, another key or maker)."""
    return parse_record_at(data, 0, len(data), key, tag)


def parse_record_at(
    buffer: bytes | mmap.mmap, offset: int, length: int, key: bytes, tag: int
) -> ReadyRecord | None:
    """`parse_record` of the `length` bytes at `offset` of `buffer` (the ring mapped,
    or bytes read): its fixed fields read in place, the rest copied once, for the
    checksum and the answer both."""
    if length < _FIXED_SIZE or offset + length > len(buffer):
        return None
    (
        live,
        checksum,
        made_by,
        key_len,
        prefix_len,
        purge_len,
        head_len,
        body_len,
        status,
        has_date,
        response_time,
        initial_age,
        lifetime,
        stored_at,
        codings_len,
    ) = _unpack_fixed(buffer, offset)
    # offsets in `data`, which starts after the dead mark, magic and checksum
    end_key = _CHECKED_KEY + key_len
    end_prefix = end_key + prefix_len
    end_purge = end_prefix + purge_len
    end_codings = end_purge + codings_len
    if (
        live != _LIVE
        or made_by != tag
        or key_len != len(key)
        or length != _UNCHECKED + end_codings + head_len + body_len
    ):
        return None
    # a record of several answers: what precedes them is checked here, the one a hit
    # takes by `coded_answer`; a copy hashes faster than a memoryview is made
    checked = end_codings if codings_len else length - _UNCHECKED
    data = buffer[offset + _UNCHECKED : offset + _UNCHECKED + checked]
    if not data.startswith(key, _CHECKED_KEY) or _xxh3(data) != checksum:
        return None
    if codings_len:
        answer, source, answers_at = b"", buffer, offset + _UNCHECKED + end_codings
    else:
        answer, source, answers_at = data[end_codings:], None, 0
    return _new_tuple(
        ReadyRecord,
        (
            answer,
            body_len,
            status,
            has_date == 1,
            data[end_key:end_prefix].decode("utf-8", "surrogateescape"),
            response_time,
            initial_age,
            lifetime,
            stored_at,
            data[end_prefix:end_purge],
            data[end_purge:end_codings],
            source,
            answers_at,
        ),
    )


def location(offset: int, length: int) -> int:
    """A record's location as the index row and the recency list keep it (never 0)."""
    return offset << LENGTH_BITS | length


def split_location(loc: int) -> tuple[int, int]:
    """(offset, length) of a location."""
    return loc >> LENGTH_BITS, loc & LENGTH_MASK


class ReadyRing:
    """The ring file of one store directory: appended to and marked under the index's
    writer lock (`DiskIndex`), read by any thread of any process sharing it."""

    def __init__(self, path: str, capacity: int) -> None:
        """Open the ring at `path`, made `capacity` bytes long (sparse) if it is new;
        an existing ring keeps its size, which every process then agrees on."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        size = os.fstat(self.fd).st_size
        if size < RING_START + READY_RING_MIN // 2:
            os.ftruncate(self.fd, capacity)
            size = capacity
        self.capacity = size
        #: the ring mapped for reads (`map_for_reads`), or None: read with `pread`
        self.view: mmap.mmap | None = None
        #: records appended, and marked dead, by this process
        self.appended = 0
        self.killed = 0

    def append(self, record: bytes) -> int:
        """Write `record` at the ring's write position (wrapping to the start when it
        does not fit before the end); its location. Only under the writer lock."""
        return self.append_many((record,))[0]

    def append_many(self, records: Sequence[bytes]) -> list[int]:
        """`append` of several records, in order, with one read of the write position,
        one write of it, and one write per run of records between wraps; their
        locations (0 for a record longer than the ring)."""
        raw = os.pread(self.fd, _POSITION.size, 0)
        position = _POSITION.unpack(raw)[0] if len(raw) == _POSITION.size else 0
        if position < RING_START:
            position = RING_START
        locations: list[int] = []
        run: list[bytes] = []
        run_start = position
        for record in records:
            length = len(record)
            if length > LENGTH_MASK or length > self.capacity - RING_START:
                locations.append(0)
                continue
            if position + length > self.capacity:
                if run:
                    os.pwritev(self.fd, run, run_start)
                    run = []
                position = run_start = RING_START
            run.append(record)
            locations.append(location(position, length))
            position += length
            self.appended += 1
        if run:
            os.pwritev(self.fd, run, run_start)
        os.pwrite(self.fd, _POSITION.pack(position), 0)
        return locations

    def kill(self, loc: int, key: str) -> bool:
        """Mark the record at `loc` dead if it is still `key`'s (the ring may have
        written another over it since); whether it did. Only under the writer lock
        (or inside an index transaction, which excludes every appender)."""
        if not self.holds(loc, key):
            return False
        os.pwrite(self.fd, _DEAD, loc >> LENGTH_BITS)
        self.killed += 1
        return True

    def holds(self, loc: int, key: str) -> bool:
        """Whether the record at `loc` is alive and starts as `key`'s does: its head
        read, not the whole record checked (`parse_record` decides a read). False
        once the ring has written another record over it."""
        offset, length = split_location(loc)
        key_bytes = key.encode("utf-8", "surrogateescape")
        fixed = _FIXED.size
        if length < fixed + len(key_bytes) or offset + length > self.capacity:
            return False
        head = os.pread(self.fd, fixed + len(key_bytes), offset)
        if len(head) < fixed + len(key_bytes) or head[1:4] != _MAGIC or head[0] != _ALIVE:
            return False
        # of this key, not of another that starts with it
        return _FIXED.unpack_from(head)[4] == len(key_bytes) and head[fixed:] == key_bytes

    def read(self, loc: int) -> bytes:
        """The bytes at `loc` (short if the ring is shorter: then the check fails)."""
        offset, length = split_location(loc)
        if self.view is not None:
            return self.view[offset : offset + length]
        return os.pread(self.fd, length, offset)

    def map_for_reads(self) -> None:
        """Read records from a shared read-only mapping of the ring from now on
        (`view`), not with `pread`: only for a ring in memory (tmpfs), where a read
        cannot fail on a device (a mapped read that does takes the process down
        with SIGBUS instead of raising). A slice of the mapping costs about 0.5 µs
        less than a `pread` over a ring of 10^6 records."""
        if self.view is None:
            self.view = mmap.mmap(self.fd, self.capacity, mmap.MAP_SHARED, mmap.PROT_READ)
            self._populate(self.view)

    def _populate(self, view: mmap.mmap) -> None:
        """Map the pages of the records written so far at once (0.13 s for 1.4 GiB on
        tmpfs), so that the first read of each does not take a page fault (about
        0.6 µs more a read, until most pages were read once). Only up to the ring's first
        hole: a read of a hole in a file in memory would give it a page."""
        try:
            written = os.lseek(self.fd, RING_START, os.SEEK_HOLE)
        except OSError:
            return  # no holes known here: left to the faults
        with contextlib.suppress(OSError, ValueError):
            view.madvise(MADV_POPULATE_READ, 0, written - written % mmap.PAGESIZE)

    def close(self) -> None:
        """Close the file (and its mapping)."""
        view, self.view = self.view, None
        if view is not None:
            view.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
