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
    )
    log.record(record)
    log.record((1700000000.5, "HEAD", None, target, 404, "stale", None, 0.5, None))
    log.flush()
    lines = stream.getvalue().splitlines()
    expected = [
        json.dumps(
            {"node": 'node "1"', **dict(zip(FIELDS, values, strict=True))}, separators=(",", ":")
        )
        for values in (
            (1700000000.123456, "GET", target, target, 200, "hit; ttl=5", 1024, 1.234, "127.0.0.1"),
            (1700000000.5, "HEAD", None, target, 404, "stale", None, 500.0, None),
        )
    ]
    assert lines == expected
    assert json.loads(lines[0])["target"] == target
