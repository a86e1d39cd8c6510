"""Traffic rules in the fleet file: what loads, and what `check` refuses or warns about.

Every refusal must name the service, the entry's index and the key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleet.config import ConfigError, parse_fleet
from fleet.rules import parse_duration, parse_rate

BASE = """
[[services]]
name = "www"
hosts = ["www.example.com"]
origins = ["http://127.0.0.1:8080"]
"""


def load(extra: str) -> object:
    return parse_fleet(BASE + extra, "t.toml").services[0].traffic


def refused(extra: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(extra)
    return str(caught.value)


def test_a_full_rule_set_loads_with_every_action() -> None:
    traffic = load(
        """
purge_method = true
purge_method_sources = ["10.0.0.0/8"]
[[services.rules]]
ttl = "1h"
stale_while_revalidate = 30
stale_if_error = "1d"
cache_key = { ignore_query = true, include_headers = ["X-Device"], include_cookies = ["ab"] }
set_response_headers = { "X-Served-By" = "edgeshield" }
remove_response_headers = ["Server"]
[services.rules.match]
path_prefix = "/static/"
methods = ["get"]
hosts = ["WWW.example.com"]
header = { name = "X-Test", value_regex = "^a" }
query_param = "v"
path_regex = "\\\\.css$"
[[services.rules]]
match = { path_prefix = "/api/" }
bypass_cache = true
set_request_headers = { "X-From-Cdn" = "1" }
remove_request_headers = ["Cookie"]
origin_group = "canary"
[[services.rules]]
match = { path_prefix = "/old/" }
redirect = { to = "https://www.example.com$path", status = 308 }
[[services.rules]]
match = { path_prefix = "/admin" }
respond = { status = 403, body = "no" }
[[services.origin_groups]]
name = "main"
origins = ["http://127.0.0.1:8081"]
weight = 90
[[services.origin_groups]]
name = "canary"
origins = ["http://127.0.0.1:8082/"]
weight = 10
[[services.origin_groups]]
name = "green"
origins = ["http://127.0.0.1:8083"]
match = { header = "X-Deploy", value = "green" }
[[services.rate_limits]]
match = { path_prefix = "/api/" }
key = "header:X-Api-Key"
rate = "10/s"
burst = 20
action = "delay"
"""
    )
    rules = traffic.rules  # type: ignore[attr-defined]
    assert [r.index for r in rules] == [1, 2, 3, 4]
    first = rules[0]
    assert first.ttl == 3600 and first.stale_while_revalidate == 30
    assert first.stale_if_error == 86400
    assert first.match.methods == ("GET",) and first.match.hosts == ("www.example.com",)
    assert first.cache_key.include_headers == ("x-device",)
    assert rules[1].origin_group == "canary" and rules[1].bypass_cache is True
    assert rules[2].redirect.status == 308
    assert rules[3].respond.status == 403
    groups = traffic.origin_groups  # type: ignore[attr-defined]
    assert [g.weight for g in groups] == [90, 10, None]
    assert groups[1].origins == ("http://127.0.0.1:8082",)
    assert groups[2].pin.header == "x-deploy"
    limit = traffic.rate_limits[0]  # type: ignore[attr-defined]
    assert (limit.key, limit.key_name, limit.rate, limit.burst) == ("header", "x-api-key", 10, 20)
    assert traffic.purge_method and traffic.warnings == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ('[[services.rules]]\nmatch = { path_regex = "(" }\nttl = 5', "path_regex", "regular"),
        (
            '[[services.rules]]\nmatch = { header = { name = "A", value_regex = "[" } }\nttl = 5',
            "value_regex",
            "regular",
        ),
        ("[[services.rules]]\nmatch = {}\nfrobnicate = 1", "frobnicate", "not a known action"),
        (
            '[[services.rules]]\nredirect = { to = "www.example.com/x" }',
            "to",
            "scheme",
        ),
        ('[[services.rules]]\nredirect = { to = "https://a/", status = 200 }', "status", "301"),
        ('[[services.rules]]\nttl = "forever"', "ttl", "not a duration"),
        ("[[services.rules]]\nrespond = { status = 99 }", "status", "between"),
        ('[[services.rules]]\norigin_group = "nope"', "origin_group", "no origin group"),
        ('[[services.rules]]\nmatch = { path_prefix = "/x" }', "match", "no action"),
        ('[[services.rules]]\nmatch = { path_prefix = "x" }\nttl = 1', "path_prefix", "start"),
        (
            '[[services.rules]]\nset_response_headers = { "Content-Length" = "1" }',
            "set_response_headers",
            "not a field",
        ),
        (
            '[[services.rules]]\nremove_request_headers = ["Host"]',
            "remove_request_headers",
            "not a field",
        ),
        (
            '[[services.rules]]\nset_response_headers = { "X-A" = "a\\r\\nb" }',
            "X-A",
            "control",
        ),
    ],
)
def test_check_refuses_a_bad_rule_naming_service_index_and_key(
    extra: str, key: str, reason: str
) -> None:
    message = refused("[[services.rules]]\nttl = 1\n" + extra)
    assert "('www') rules #2" in message
    assert f"key {key!r}" in message
    assert reason in message


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ('rate = "100"', "rate", "unit"),
        ("rate = 100", "rate", "unit"),
        ('rate = "100/fortnight"', "rate", "unit"),
        ('rate = "1/s"\nkey = "ip"', "key", "client_ip"),
        ('rate = "1/s"\naction = "drop"', "action", "reject"),
        ("", "rate", "required"),
    ],
)
def test_check_refuses_a_bad_rate_limit(extra: str, key: str, reason: str) -> None:
    message = refused("[[services.rate_limits]]\n" + extra)
    assert "('www') rate_limits #1" in message
    assert f"key {key!r}" in message and reason in message


def test_check_refuses_weights_that_do_not_sum_to_100() -> None:
    message = refused(
        """
[[services.origin_groups]]
name = "a"
origins = ["http://127.0.0.1:1"]
weight = 90
[[services.origin_groups]]
name = "b"
origins = ["http://127.0.0.1:2"]
weight = 20
"""
    )
    assert "('www')" in message and "key 'origin_groups'" in message and "110" in message


def test_check_refuses_a_group_with_both_or_neither_weight_and_match() -> None:
    message = refused('[[services.origin_groups]]\nname = "a"\norigins = ["http://h:1"]')
    assert "origin_groups #1 ('a') key 'weight'" in message


def test_check_refuses_a_purge_source_that_is_not_a_network() -> None:
    assert "purge_method_sources" in refused('purge_method_sources = ["not-a-net"]')


def test_a_shadowed_rule_is_a_warning_naming_both_rules() -> None:
    traffic = load(
        """
[[services.rules]]
match = { path_prefix = "/static/" }
ttl = "1h"
[[services.rules]]
match = { path_prefix = "/static/img/" }
ttl = "1d"
[[services.rules]]
match = { path_prefix = "/static/img/" }
set_response_headers = { "X-A" = "1" }
"""
    )
    warnings = traffic.warnings  # type: ignore[attr-defined]
    assert len(warnings) == 1
    assert "rules #2" in warnings[0] and "rule #1" in warnings[0]


def test_check_prints_the_warning_and_still_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    # `check` wants a whole fleet: a region and an edge besides the service
    whole = (
        '[[regions]]\nname = "r"\nlatitude = 0.0\nlongitude = 0.0\n'
        'client_networks = ["10.0.0.0/8"]\n\n'
        '[[edges]]\nname = "e"\nregion = "r"\nlisten = "127.0.0.1:18000"\n'
        'admin_listen = "127.0.0.1:18001"\ncache_dir = "state/e"\ncache_size = "8MiB"\n'
    )
    path.write_text(
        whole + BASE + '[[services.rules]]\nttl = "1h"\n[[services.rules]]\nmatch = '
        '{ path_prefix = "/a" }\nttl = 5\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "warning" in done.stderr and "rules #2" in done.stderr


def test_durations_and_rates() -> None:
    assert parse_duration("90") == 90 and parse_duration("5m") == 300
    assert parse_duration(7) == 7 and parse_duration("250ms") == 0.25
    assert parse_rate("600/m") == 10 and parse_rate("36/h") == 0.01
    for bad in ("", "-1s", "1 week", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for bad_rate in ("0/s", "5", 5, "/s"):
        with pytest.raises(ValueError):
            parse_rate(bad_rate)
