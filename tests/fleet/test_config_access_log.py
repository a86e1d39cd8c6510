"""A node's `access_log` key: stdout by default, "off" or a file path, and errors that
name the table and the key."""

from __future__ import annotations

import pytest

from fleet.config import parse_fleet
from tests.fleet.test_config import VALID, error_of


def with_lines(lines: str) -> str:
    return VALID.replace("cache_size = 536870912\n", f"cache_size = 536870912\n{lines}\n")


def test_the_access_log_goes_to_stdout_unless_told() -> None:
    assert parse_fleet(VALID, "f.toml").edge("edge1").access_log == "stdout"
    for setting in ("off", "/var/log/edgeshield/access.log", "logs/access.log"):
        edge = parse_fleet(with_lines(f'access_log = "{setting}"'), "f.toml").edge("edge1")
        assert edge.access_log == setting


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('access_log = ""', '"stdout", "off" or a file path'),
        ('access_log = " stdout"', '"stdout", "off" or a file path'),
        ('access_log = "a\\u0000b"', '"stdout", "off" or a file path'),
        ('access_log = "/var/log/"', "not a directory"),
        ("access_log = false", "expected a string"),
    ],
)
def test_a_bad_access_log_names_the_table_and_key(lines: str, message: str) -> None:
    error = error_of(with_lines(lines))
    assert "[[edges]] #1 ('edge1')" in error and "key 'access_log'" in error, error
    assert message in error, error
