"""The access log's lines: the same JSON, byte for byte, as `json.dumps` of the record
would give, whatever the client put in the host and the target."""

from __future__ import annotations

import io
import json

import pytest

from edge.accesslog import FIELDS, AccessLog
from edge.outcome import Outcome

TRICKY = [
    "/plain/path?q=1",
    '/quote"d',
    "/back\\slash",
    "/control\x01\x7f",
    "/ünïcode",
    "/surrogate-\udcff",
    "",
]


@pytest.mark.parametrize("target", TRICKY)
def test_a_line_is_what_json_dumps_writes(target: str) -> None:
    stream = io.StringIO()
    log = AccessLog(stream, 'node "1"')
    record = (
        1700000000.123456,
        "GET",
        target,
        target,
        200,
        Outcome(hit=True, ttl=5),
        1024,
        0.0012345,
        "127.0.0.1",
        "https/1.1",
    )
    log.record(record)
    log.record((1700000000.5, "HEAD", None, target, 404, "stale", None, 0.5, None, target))
    log.flush()
    lines = stream.getvalue().splitlines()
    expected = [
        json.dumps(
            {"node": 'node "1"', **dict(zip(FIELDS, values, strict=True))}, separators=(",", ":")
        )
        for values in (
            (
                1700000000.123456,
                "GET",
                target,
                target,
                200,
                "hit; ttl=5",
                1024,
                1.234,
                "127.0.0.1",
                "https/1.1",
            ),
            (1700000000.5, "HEAD", None, target, 404, "stale", None, 500.0, None, target),
        )
    ]
    assert lines == expected
    assert json.loads(lines[0])["target"] == target


def test_lines_that_share_their_fields_keep_their_own_time_and_duration() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, "edge1")
    for n in range(3):
        outcome = Outcome(hit=True, ttl=60)
        log.record((1700000000.0 + n, "GET", "h", "/t", 200, outcome, 5, 0.001 * (n + 1), "c"))
        log.flush()  # the shared fields are reused across batches too
    log.record((1700000009.5, "GET", "h", "/t", 200, Outcome(hit=True, ttl=59), 5, 0.25, "c"))
    log.flush()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["ts"], r["ms"], r["cache"]) for r in records] == [
        (1700000000.0, 1.0, "hit; ttl=60"),
        (1700000001.0, 2.0, "hit; ttl=60"),
        (1700000002.0, 3.0, "hit; ttl=60"),
        (1700000009.5, 250.0, "hit; ttl=59"),
    ]
