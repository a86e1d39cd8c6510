"""The access log's lines: the same JSON, byte for byte, as `json.dumps` of the record
would give, whatever the client put in the host, the target, its User-Agent, Referer
and X-Request-ID; the client's fields bounded, a hostile id replaced."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import pytest
from multidict import CIMultiDict

from edge.accesslog import (
    FIELDS,
    MAX_REFERER,
    MAX_UA,
    AccessLog,
    AppendFile,
    is_safe_id,
    request_id,
)
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

#: an id this process makes: its random prefix, a dash, a counter in hex
MADE_ID = re.compile(r"[0-9a-f]{10}-[0-9a-f]+")


def dumps(values: dict[str, object]) -> str:
    return json.dumps(values, separators=(",", ":"))


@pytest.mark.parametrize("text", TRICKY)
def test_a_line_is_what_json_dumps_writes(text: str) -> None:
    stream = io.StringIO()
    log = AccessLog(stream, 'node "1"')
    miss = Outcome(fwd="uri-miss", stored=True, upstream_seconds=0.0123456)
    log.record(
        (
            1700000000.123456,
            "GET",
            text,
            text,
            200,
            miss,
            1024,
            0.0012345,
            "127.0.0.1",
            "https/1.1",
            text,
            text,
            "req-1",
        )
    )
    log.record(
        (1700000000.5, "HEAD", None, text, 404, "stale", None, 0.5, None, text, None, None, "id2")
    )
    log.flush()
    lines = stream.getvalue().splitlines()
    expected = [
        dumps(
            {
                "node": 'node "1"',
                "ts": 1700000000.123456,
                "method": "GET",
                "host": text,
                "target": text,
                "status": 200,
                "cache": "fwd=uri-miss; stored",
                "bytes": 1024,
                "ms": 1.234,
                "client": "127.0.0.1",
                "proto": "https/1.1",
                "ua": text,
                "referer": text,
                "upstream_ms": 12.346,
                "id": "req-1",
            }
        ),
        dumps(
            {
                "node": 'node "1"',
                **dict(
                    zip(
                        FIELDS,
                        (
                            1700000000.5,
                            "HEAD",
                            None,
                            text,
                            404,
                            "stale",
                            None,
                            500.0,
                            None,
                            text,
                            None,
                            None,
                            None,
                            "id2",
                        ),
                        strict=True,
                    )
                ),
            }
        ),
    ]
    assert lines == expected
    assert json.loads(lines[0])["ua"] == text


def hit(ua: object, referer: object, rid: object) -> tuple[object, ...]:
    return (
        1700000000.0,
        "GET",
        "h",
        "/t",
        200,
        Outcome(hit=True, ttl=60),
        5,
        0.001,
        "c",
        "http/1.1",
        ua,
        referer,
        rid,
    )


def test_hostile_client_fields_are_escaped_and_bounded() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, "edge1")
    ua = 'evil"\r\n{"status":500}\\' + "\x00\udcff" + "u" * 10_000
    referer = "http://x/" + "\u2028" * 10_000
    log.record(hit(ua, referer, "ok-id"))
    log.flush()
    (line,) = stream.getvalue().splitlines()
    assert "\r" not in line and "\u2028" not in line and line.isascii()
    record = json.loads(line)
    assert record["ua"] == ua[:MAX_UA]
    assert record["referer"] == referer[:MAX_REFERER]
    assert record["status"] == 200 and record["upstream_ms"] is None
    assert len(line) < 8 * (MAX_UA + MAX_REFERER)


@pytest.mark.parametrize(
    "hostile",
    [
        'x", "status": 500',
        "a b",
        "line\r\nbreak",
        "é",
        "x" * 65,
        "",
        "\udcff",
    ],
)
def test_a_hostile_client_id_is_replaced_by_one_of_ours(hostile: str) -> None:
    stream = io.StringIO()
    log = AccessLog(stream, "edge1")
    log.record(hit("ua", None, hostile))
    log.flush()
    record = json.loads(stream.getvalue())
    assert MADE_ID.fullmatch(record["id"]), record["id"]
    assert not is_safe_id(hostile)
    headers = CIMultiDict({"X-Request-ID": hostile})
    made = request_id(headers)
    assert MADE_ID.fullmatch(made) and headers.getall("X-Request-ID") == [made]


def test_a_safe_client_id_is_kept_and_a_missing_one_made() -> None:
    uuid = "0b6f2a1e-3c1d-4d8e-9a7b-5f2c8e1d0a93"
    headers = CIMultiDict({"X-Request-ID": uuid})
    assert request_id(headers) == uuid and headers["X-Request-ID"] == uuid
    stream = io.StringIO()
    log = AccessLog(stream, "edge1")
    log.record(hit(None, None, uuid))
    log.record(hit(None, None, None))
    log.record(hit(None, None, None))
    log.flush()
    ids = [json.loads(line)["id"] for line in stream.getvalue().splitlines()]
    assert ids[0] == uuid
    assert MADE_ID.fullmatch(ids[1]) and MADE_ID.fullmatch(ids[2]) and ids[1] != ids[2]
    # two X-Request-ID fields: the first, if safe, as the hot lane logs a hit's; the
    # next tier gets it alone
    doubled: CIMultiDict[str] = CIMultiDict([("X-Request-ID", "a"), ("X-Request-ID", "b")])
    assert request_id(doubled) == "a" and doubled.getall("X-Request-ID") == ["a"]
    doubled = CIMultiDict([("X-Request-ID", "a b"), ("X-Request-ID", "b")])
    made = request_id(doubled)
    assert MADE_ID.fullmatch(made) and doubled.getall("X-Request-ID") == [made]


def test_lines_that_share_their_fields_keep_their_own_time_duration_and_id() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, "edge1")
    for n in range(3):
        outcome = Outcome(hit=True, ttl=60)
        log.record(
            (
                1700000000.0 + n,
                "GET",
                "h",
                "/t",
                200,
                outcome,
                5,
                0.001 * (n + 1),
                "c",
                "p",
                "ua",
                "ref",
                f"id-{n}",
            )
        )
        log.flush()  # the shared fields are reused across batches too
    log.record(
        (
            1700000009.5,
            "GET",
            "h",
            "/t",
            200,
            Outcome(hit=True, ttl=59),
            5,
            0.25,
            "c",
            "p",
            "ua",
            "ref",
            "id-9",
        )
    )
    log.flush()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["ts"], r["ms"], r["cache"], r["id"]) for r in records] == [
        (1700000000.0, 1.0, "hit; ttl=60", "id-0"),
        (1700000001.0, 2.0, "hit; ttl=60", "id-1"),
        (1700000002.0, 3.0, "hit; ttl=60", "id-2"),
        (1700000009.5, 250.0, "hit; ttl=59", "id-9"),
    ]


def test_a_log_file_is_appended_to_and_reopened_after_a_move(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("an earlier line\n")
    log = AccessLog(AppendFile(str(path)), "edge1")
    log.record(hit("first", None, "one"))
    log.flush()
    path.rename(tmp_path / "access.log.1")
    log.record(hit("second", None, "two"))
    log.reopen()  # what SIGHUP does: the queued line goes to the old file first
    log.record(hit("third", None, "three"))
    log.flush()
    rotated = (tmp_path / "access.log.1").read_text().splitlines()
    assert rotated[0] == "an earlier line"
    assert [json.loads(line)["id"] for line in rotated[1:]] == ["one", "two"]
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["three"]
    # the file it made is not for everyone: a referer may carry a token
    assert path.stat().st_mode & 0o007 == 0


async def test_a_full_batch_is_written_without_waiting_for_the_interval() -> None:
    # a whole interval's lines written at once would pause every answer in flight
    stream = io.StringIO()
    log = AccessLog(stream, "edge1", interval=3600.0, batch=8)
    log.start()
    try:
        record = (
            1.0,
            "GET",
            "h",
            "/",
            200,
            "hit",
            1,
            0.001,
            "127.0.0.1",
            "http/1.1",
            None,
            None,
            None,
        )
        for _ in range(7):
            log.record(record)
        await asyncio.sleep(0)
        assert stream.getvalue() == ""  # under a batch: left for the interval
        log.record(record)
        await asyncio.sleep(0)
        assert len(stream.getvalue().splitlines()) == 8
    finally:
        await log.stop()
