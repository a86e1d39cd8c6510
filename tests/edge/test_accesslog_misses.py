"""The access log's lines of requests that went upstream: each is rendered on its own
(its upstream_ms is its own), by one scan of its texts together, and must still be
exactly what `json.dumps` writes, whichever field holds what needs escaping."""

from __future__ import annotations

import io
import itertools
import json

import pytest

from edge.accesslog import MAX_REFERER, MAX_UA, AccessLog
from edge.outcome import Outcome

PLAIN = "plain text; with spaces/and=signs"
#: one value per kind of text the one-scan path must tell apart from plain
AWKWARD = ['quote"d', "back\\slash", "tab\there", "ünï", "surrogate-\udcff", "\x7f", ""]
#: where a value is put, in RECORD order
TEXT_SLOTS = {"method": 1, "host": 2, "target": 3, "client": 8, "proto": 9, "ua": 10, "referer": 11}
OTHER_SLOTS = {"status": 4, "cache": 5, "size": 6}


def miss_record(**values: object) -> tuple[object, ...]:
    record: list[object] = [
        1700000000.25,
        "GET",
        "www.example.test",
        "/a?u=1",
        200,
        Outcome(fwd="uri-miss", stored=True, upstream_seconds=0.00071),
        1024,
        0.0031,
        "127.0.0.1",
        "http/1.1",
        None,
        None,
        "rid-1",
    ]
    for name, value in values.items():
        record[{**TEXT_SLOTS, **OTHER_SLOTS}[name]] = value
    return tuple(record)


def expected_line(record: tuple[object, ...]) -> str:
    ts, method, host, target, status, cache, size, seconds, client, proto, ua, ref, rid = record
    assert isinstance(cache, Outcome) and cache.upstream_seconds is not None
    assert isinstance(seconds, float)
    values = {
        "node": "edge1",
        "ts": ts,
        "method": method,
        "host": host,
        "target": target,
        "status": status,
        "cache": cache.member(),
        "bytes": size,
        "ms": round(seconds * 1000, 3),
        "client": client,
        "proto": proto,
        "ua": ua[:MAX_UA] if isinstance(ua, str) else ua,
        "referer": ref[:MAX_REFERER] if isinstance(ref, str) else ref,
        "upstream_ms": round(cache.upstream_seconds * 1000, 3),
        "id": rid,
    }
    return json.dumps(values, separators=(",", ":"))


def written(*records: tuple[object, ...]) -> list[str]:
    stream = io.StringIO()
    log = AccessLog(stream, "edge1")
    for record in records:
        log.record(record)
    log.flush()
    return stream.getvalue().splitlines()


@pytest.mark.parametrize(
    ("slot", "text"), list(itertools.product(sorted(TEXT_SLOTS), [PLAIN, *AWKWARD]))
)
def test_a_miss_line_is_what_json_dumps_writes_whatever_field_needs_escaping(
    slot: str, text: str
) -> None:
    record = miss_record(**{slot: text})
    assert written(record) == [expected_line(record)]


def test_missing_values_and_numbers_of_other_types_are_written_as_json_writes_them() -> None:
    records = [
        miss_record(host=None, client=None, size=None),
        miss_record(status=True, size=False),  # bools are ints to Python, not to JSON
        miss_record(ua="u" * (MAX_UA + 10), referer="r" * (MAX_REFERER + 10)),
        miss_record(ua='"' * (MAX_UA + 10), referer="\\" * (MAX_REFERER + 10)),
    ]
    assert written(*records) == [expected_line(record) for record in records]


def test_misses_of_the_same_url_keep_their_own_upstream_time() -> None:
    first = miss_record()
    second = miss_record(cache=Outcome(fwd="uri-miss", stored=True, upstream_seconds=0.5))
    lines = written(first, second, first)
    assert [json.loads(line)["upstream_ms"] for line in lines] == [0.71, 500.0, 0.71]
