"""Errors for people: one line with what failed and what to do, never a repr or a
traceback; --version; help for every flag with examples and exit codes."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import RepeatFilter, exit_status
from runtime.version import version
from tests.support.fleetfile import TEST_NODE_SECRET, FleetSpec
from tests.support.ports import free_port


def edgeshield(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_version_is_printed() -> None:
    done = edgeshield("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"edgeshield {version()}"
    assert version() != "unknown"


def test_purge_help_explains_every_flag_and_the_exit_codes() -> None:
    text = edgeshield("purge", "--help").stdout
    for flag in ("--api", "--service", "--url", "--prefix", "--tag", "--all", "--soft", "--wait"):
        line = next(line for line in text.splitlines() if line.strip().startswith(flag))
        assert len(line.strip()) > len(flag) + 10 or flag in text.split(line)[1][:200], flag
    assert "examples:" in text and "EDGESHIELD_TOKEN" in text
    for code in ("0  complete", "1  the purge API", "2  bad input", "3  no token", "4  --wait"):
        assert code in text


def test_the_top_level_help_has_examples_and_exit_codes() -> None:
    text = edgeshield("--help").stdout
    assert "examples:" in text and "exit status:" in text and "SIGHUP" in text


def test_a_purge_api_that_does_not_answer_is_one_line_naming_the_url_and_errno() -> None:
    port = free_port()
    done = edgeshield(
        "purge",
        "--api",
        f"http://127.0.0.1:{port}",
        "--service",
        "site",
        "--all",
        env={"EDGESHIELD_TOKEN": "t"},
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"edgeshield purge: cannot connect to 127.0.0.1:{port} ")
    assert "Connection refused" in line
    assert "Error(" not in line and "ConnectionKey" not in line


def test_a_purge_api_address_without_a_scheme_is_bad_input() -> None:
    done = edgeshield(
        "purge",
        "--api",
        "127.0.0.1:9300",
        "--service",
        "site",
        "--all",
        env={"EDGESHIELD_TOKEN": "t"},
    )
    assert done.returncode == 2
    assert "is not an http:// or https:// URL (e.g. --api http://127.0.0.1:9300)" in done.stderr
    assert "URL(" not in done.stderr


def test_an_edge_whose_port_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    spec = FleetSpec(tmp_path, origins=["http://127.0.0.1:1"])
    path = tmp_path / "fleet.toml"
    path.write_text(spec.render())
    listen = next(
        line.split('"')[1] for line in path.read_text().splitlines() if line.startswith("listen")
    )
    host, port = listen.rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        done = edgeshield(
            "edge",
            "--config",
            str(path),
            "--node",
            "edge1",
            env={"EDGESHIELD_NODE_SECRET": TEST_NODE_SECRET},
        )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line == (
        f"edgeshield edge edge1: cannot listen on {listen}: Address already in use; stop the "
        "process that holds it, or change [[edges]] edge1 listen in the fleet file"
    )


def test_a_repeated_warning_is_logged_once_then_counted() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.repeats")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Keep()
    repeat = RepeatFilter(window=3600)
    handler.addFilter(repeat)
    logger.addHandler(handler)
    try:
        for _ in range(5):
            logger.warning("pull from %s failed: %s", "http://api", "Connection refused")
        logger.warning("something else")
        logger.info("info is never held back")
        logger.info("info is never held back")
        repeat.window = 0.0  # the window is over: the next repeat carries the count
        logger.warning("pull from %s failed: %s", "http://api", "Connection refused")
    finally:
        logger.removeHandler(handler)
    assert records[:4] == [
        "pull from http://api failed: Connection refused",
        "something else",
        "info is never held back",
        "info is never held back",
    ]
    assert records[4].startswith(
        "pull from http://api failed: Connection refused (and 4 more times in the last"
    )


@pytest.mark.parametrize(
    ("code", "words"),
    [(0, "exited with status 0"), (1, "exited with status 1"), (-9, "was killed by SIGKILL")],
)
def test_exit_statuses_read_as_words(code: int, words: str) -> None:
    assert exit_status(code) == words
