"""The client-facing front's keys of a node's table: defaults, and errors that name the
table and the key."""

from __future__ import annotations

import os

import pytest

from fleet.config import parse_fleet
from tests.fleet.test_config import VALID, error_of


def with_lines(lines: str) -> str:
    return VALID.replace("cache_size = 536870912\n", f"cache_size = 536870912\n{lines}\n")


def test_the_front_keys_have_defaults() -> None:
    edge = parse_fleet(VALID, "f.toml").edge("edge1")
    assert edge.front == "httptools"
    assert (edge.max_head_size, edge.max_header_fields) == (32 * 1024, 100)
    assert (edge.body_timeout, edge.send_timeout) == (60.0, 60.0)
    # like nginx's `worker_processes auto`
    assert edge.workers == (os.cpu_count() or 1)


def test_the_front_keys_can_be_set() -> None:
    text = with_lines(
        'front = "aiohttp"\nmax_head_size = "8KiB"\nmax_header_fields = 20\n'
        'body_timeout = 5\nsend_timeout = 7.5\nworkers = "auto"'
    )
    edge = parse_fleet(text, "f.toml").edge("edge1")
    assert (edge.front, edge.max_head_size, edge.max_header_fields) == ("aiohttp", 8192, 20)
    assert (edge.body_timeout, edge.send_timeout) == (5.0, 7.5)
    assert parse_fleet(with_lines("workers = 3"), "f.toml").edge("edge1").workers == 3


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ('front = "nginx"', "front", "one of httptools, aiohttp"),
        ("front = 1", "front", "expected a string"),
        ('workers = "many"', "workers", '"auto"'),
        ("workers = 0", "workers", "at least 1"),
        ('max_head_size = "100"', "max_head_size", "at least 1KiB"),
        ("max_header_fields = 0", "max_header_fields", "at least 1"),
        ("body_timeout = 0", "body_timeout", "at least 0.1"),
        ("send_timeout = inf", "send_timeout", "finite"),
    ],
)
def test_bad_front_keys_name_the_table_and_key(lines: str, key: str, message: str) -> None:
    error = error_of(with_lines(lines))
    assert "[[edges]] #1 ('edge1')" in error and f"key {key!r}" in error, error
    assert message in error, error
