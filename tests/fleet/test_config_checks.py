"""`check` catches what it used to pass, and reports every mistake of a file at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleet.config import ConfigError, ConfigErrors, check_whole_fleet, parse_fleet, parse_size
from tests.fleet.test_config import VALID


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_fleet(text, "f.toml")
    return [str(error) for error in caught.value.errors]


@pytest.mark.parametrize("size", ["512M", "512m", "1G", "2k", "1T"])
def test_a_size_with_a_bare_unit_is_refused_as_ambiguous(size: str) -> None:
    with pytest.raises(ValueError, match="ambiguous") as caught:
        parse_size(size)
    assert "iB" in str(caught.value) and "B' (of 1000)" in str(caught.value)


@pytest.mark.parametrize(
    ("size", "expected"),
    [("512MiB", 512 * 1024**2), ("512MB", 512 * 1000**2), ("1gib", 1024**3), ("10", 10)],
)
def test_unambiguous_sizes_still_parse(size: str, expected: int) -> None:
    assert parse_size(size) == expected


def test_a_wildcard_listener_clashes_with_a_host_on_the_same_port() -> None:
    text = VALID.replace('listen = "127.0.1.1:8000"', 'listen = "0.0.0.0:9100"')
    [message] = errors_of(text)
    assert "[[edges]] ('edge1') key 'listen'" in message
    assert "0.0.0.0:9100 is already used by shield1.listen" in message


def test_the_purge_api_and_geo_are_in_the_clash_check() -> None:
    text = VALID.replace('http_listen = "127.0.0.1:9400"', 'http_listen = "127.0.0.1:9300"')
    [message] = errors_of(text)
    assert "[geo] key 'http_listen'" in message and "purge_api.listen" in message


def test_port_zero_is_refused() -> None:
    [message] = errors_of(VALID.replace("127.0.1.1:8001", "127.0.1.1:0"))
    assert "key 'admin_listen'" in message and "port 0" in message


def test_a_network_with_host_bits_set_is_refused_with_the_network_meant() -> None:
    [message] = errors_of(VALID.replace("198.51.100.0/24", "198.51.100.7/24"))
    assert "key 'client_networks'" in message
    assert "'198.51.100.7/24' has host bits set: did you mean '198.51.100.0/24'?" in message


def test_a_listen_host_that_is_not_an_address_is_blamed_on_listen() -> None:
    [message] = errors_of(VALID.replace('listen = "127.0.1.1:8000"', 'listen = "localhost:8000"'))
    assert "[[edges]] #1 ('edge1') key 'listen'" in message
    assert "set public_address" in message


def test_every_mistake_is_reported_at_once() -> None:
    text = (
        VALID.replace("latitude = 50.1", "latitude = 95")
        .replace('cache_size = "1GiB"', 'cache_size = "1G"')
        .replace("cache_size = 536870912", "cache_size = 536870912\ncolour = 1\nshape = 2")
        .replace("127.0.1.1:8001", "127.0.0.1:9100")
    )
    with pytest.raises(ConfigErrors) as caught:
        parse_fleet(text, "f.toml")
    found = [str(error) for error in caught.value.errors]
    assert len(found) == 4, found
    assert any("[[regions]] #1 ('eu') key 'latitude'" in e for e in found)
    assert any("[[shields]] #1 ('shield1') key 'cache_size'" in e for e in found)
    assert any("key 'colour'" in e for e in found)
    assert any("key 'shape'" in e for e in found)
    # the shield's table had an error, so the clash with its listen cannot be seen yet;
    # and no error about the region, whose entry was wrong: no repeats
    assert not any("no region named" in e for e in found)


def test_a_fleet_without_edges_is_refused_by_check(tmp_path: Path) -> None:
    text = VALID.split("[[edges]]")[0] + "[purge_api]" + VALID.split("[purge_api]")[1]
    fleet = parse_fleet(text, "f.toml")  # a partial file loads (one process may use it)
    with pytest.raises(ConfigError, match="no edge"):
        check_whole_fleet(fleet)
    path = tmp_path / "edgeless.toml"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{path}: [[edges]]: the fleet has no edge" in done.stderr


def test_check_prints_every_error_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        VALID.replace("latitude = 50.1", "latitude = 95").replace(
            "cache_size = 536870912", 'cache_size = "512M"'
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == f"edgeshield: 2 errors in {path}:"
    assert lines[1].startswith(f"edgeshield: {path}: [[regions]] #1 ('eu') key 'latitude'")
    assert lines[2].startswith(f"edgeshield: {path}: [[edges]] #1 ('edge1') key 'cache_size'")
    assert "Traceback" not in done.stderr


def test_every_mistake_of_one_table_is_reported() -> None:
    text = VALID.replace(
        "cache_size = 536870912",
        'cache_size = "512M"\nworkers = 0\nhead_timeout = "soon"\ncolour = 1',
    ).replace("latitude = 50.1\nlongitude = 8.7", "latitude = 95")
    found = errors_of(text)
    edge = [e for e in found if "[[edges]] #1 ('edge1')" in e]
    assert [e.split(" key ")[1].split(":")[0] for e in edge] == [
        "'cache_size'",
        "'workers'",
        "'head_timeout'",
        "'colour'",
    ]
    region = [e for e in found if "[[regions]] #1 ('eu')" in e]
    assert len(region) == 2  # latitude out of range, longitude missing
