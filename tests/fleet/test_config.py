"""The fleet file: a valid file, sizes, and bad files whose errors name file, table, key."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.demo import DEMO_HOST, demo_fleet_toml
from fleet.config import (
    ConfigError,
    load_fleet,
    node_secret,
    object_limit,
    parse_fleet,
    parse_size,
    split_host_port,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet.toml"

VALID_TEMPLATE = """
[[regions]]
name = "eu"
latitude = 50.1
longitude = 8.7
client_networks = ["198.51.100.0/24"]

[[services]]
name = "site"
hosts = ["www.example.com"]
origins = ["http://127.0.0.1:8080"]

[[shields]]
name = "shield1"
region = "eu"
listen = "127.0.0.1:9100"
admin_listen = "127.0.0.1:9101"
cache_dir = "state/shield1"
cache_size = "1GiB"

[[edges]]
name = "edge1"
region = "eu"
listen = "127.0.1.1:8000"
admin_listen = "127.0.1.1:8001"
cache_dir = "state/edge1"
cache_size = 536870912

[purge_api]
listen = "127.0.0.1:9300"
data_dir = "state/purge"
tokens = [{ name = "ci", sha256 = "{digest}", services = ["site"] }]

[geo]
dns_listen = "127.0.0.1:5353"
http_listen = "127.0.0.1:9400"
zone = "CDN.Example.com."
mmdb = ""

[security]
node_secret_env = "MY_SECRET"
"""
VALID = VALID_TEMPLATE.replace("{digest}", hashlib.sha256(b"t").hexdigest())


def error_of(text: str, source: str = "fleet-under-test.toml") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_fleet(text, source)
    message = str(caught.value)
    assert message.startswith(f"{source}: "), message
    return message


def test_a_valid_file_loads_with_every_section() -> None:
    fleet = parse_fleet(VALID, "valid.toml")
    assert [r.name for r in fleet.regions] == ["eu"]
    assert fleet.regions[0].client_networks == ("198.51.100.0/24",)
    assert fleet.services[0].hosts == ("www.example.com",)
    assert fleet.shield("shield1").cache_size == 1024**3
    edge = fleet.edge("edge1")
    assert edge.cache_size == 536870912
    assert edge.public_address == "127.0.1.1"
    assert edge.url == "http://127.0.1.1:8000"
    assert edge.admin_url == "http://127.0.1.1:8001"
    assert [n.name for n in fleet.nodes] == ["shield1", "edge1"]
    assert fleet.purge_api is not None
    assert fleet.purge_api.tokens[0].services == ("site",)
    assert fleet.geo is not None and fleet.geo.zone == "cdn.example.com"
    assert fleet.security.node_secret_env == "MY_SECRET"


def test_the_example_fleet_file_is_valid() -> None:
    fleet = load_fleet(EXAMPLE)
    assert len(fleet.regions) == 2
    assert {e.name for e in fleet.edges} == {"edge-eu", "edge-us"}
    assert fleet.geo is not None and fleet.geo.coverage_zones[0].region == "eu-west"
    assert fleet.purge_api is not None
    assert (
        fleet.purge_api.tokens[0].sha256 == hashlib.sha256(b"example-token-change-me").hexdigest()
    )


def test_the_demo_fleet_is_valid_and_stores_only_the_tokens_hash(tmp_path: Path) -> None:
    text, info = demo_fleet_toml(tmp_path)
    fleet = parse_fleet(text, "demo.toml")
    assert [r.name for r in fleet.regions] == ["eu-west", "us-east", "ap-northeast"]
    assert len(fleet.shields) == 2 and len(fleet.edges) == 3
    assert {e.region for e in fleet.edges} == {r.name for r in fleet.regions}
    assert fleet.services[0].hosts == (DEMO_HOST,)
    assert fleet.services[0].origins == (info.origin_url,)
    assert info.token not in text
    assert fleet.purge_api is not None
    assert fleet.purge_api.tokens[0].sha256 == hashlib.sha256(info.token.encode()).hexdigest()
    assert fleet.geo is not None and fleet.geo.zone == info.zone
    addresses = [n.listen for n in fleet.nodes] + [n.admin_listen for n in fleet.nodes]
    addresses += [fleet.purge_api.listen, fleet.geo.dns_listen, fleet.geo.http_listen]
    assert len(set(addresses)) == len(addresses)
    assert all(n.cache_dir.startswith(str(tmp_path)) for n in fleet.nodes)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("512MiB", 512 * 1024**2),
        ("1GiB", 1024**3),
        ("1 gib", 1024**3),
        ("10MB", 10 * 1000**2),
        ("1.5KiB", 1536),
        ("2TB", 2 * 1000**4),
        ("7B", 7),
    ],
)
def test_sizes_take_bytes_or_units(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "12 parsecs", "-1", -1, True, 1.5, "1e3"])
def test_bad_sizes_say_why(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**50))
def test_a_size_in_mib_is_that_many_mebibytes(n: int) -> None:
    assert parse_size(f"{n}MiB") == n * 1024**2
    assert parse_size(n) == n


@given(st.text(max_size=20))
def test_any_text_is_a_size_or_a_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert size >= 0


def test_a_size_with_units_in_the_file_is_bytes() -> None:
    fleet = parse_fleet(VALID.replace('cache_size = "1GiB"', 'cache_size = "300MiB"'))
    assert fleet.shield("shield1").cache_size == 300 * 1024**2
    message = error_of(VALID.replace('cache_size = "1GiB"', 'cache_size = "lots"'))
    assert "[[shields]] #1 ('shield1') key 'cache_size'" in message


def test_host_port_splits_ipv4_and_ipv6() -> None:
    assert split_host_port("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_host_port("[::1]:53") == ("::1", 53)
    for bad in ("127.0.0.1", "host:", ":80", "h:99999", "h:port"):
        with pytest.raises(ValueError):
            split_host_port(bad)


def test_a_missing_key_is_named() -> None:
    message = error_of(VALID.replace('listen = "127.0.1.1:8000"\n', ""))
    assert "[[edges]] #1 ('edge1') key 'listen'" in message
    assert "is required" in message


def test_a_wrong_type_is_named() -> None:
    message = error_of(VALID.replace("latitude = 50.1", 'latitude = "north"'))
    assert "[[regions]] #1 ('eu') key 'latitude'" in message
    assert "expected a number, got str" in message
    message = error_of(VALID.replace('hosts = ["www.example.com"]', 'hosts = "www.example.com"'))
    assert "[[services]] #1 ('site') key 'hosts'" in message


def test_an_unknown_key_is_named() -> None:
    message = error_of(
        VALID.replace(
            'region = "eu"\nlisten = "127.0.1.1', 'region = "eu"\nlistne = "x"\nlisten = "127.0.1.1'
        )
    )
    assert "[[edges]] #1 ('edge1') key 'listne'" in message
    assert "is not a known key" in message
    message = error_of(VALID.replace('zone = "CDN', 'zome = 1\nzone = "CDN'))
    assert "[geo] key 'zome'" in message


def test_a_bad_cidr_is_named() -> None:
    message = error_of(VALID.replace("198.51.100.0/24", "198.51.100.0/33"))
    assert "[[regions]] #1 ('eu') key 'client_networks'" in message
    assert "'198.51.100.0/33' is not a CIDR network" in message


def test_security_defaults_trust_no_proxy_and_no_credentialed_heuristic() -> None:
    security = parse_fleet(VALID, "valid.toml").security
    assert security.trusted_proxies == ()
    assert security.heuristic_freshness_with_credentials is False


def test_trusted_proxies_and_the_credentialed_heuristic_are_read() -> None:
    text = VALID.replace(
        'node_secret_env = "MY_SECRET"',
        'node_secret_env = "MY_SECRET"\ntrusted_proxies = ["10.0.0.0/8", "2001:db8::/32"]\n'
        "heuristic_freshness_with_credentials = true",
    )
    security = parse_fleet(text, "valid.toml").security
    assert security.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32")
    assert security.heuristic_freshness_with_credentials is True


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('trusted_proxies = ["10.0.0.0/33"]', "'10.0.0.0/33' is not a CIDR network"),
        ('trusted_proxies = "10.0.0.0/8"', "expected"),
        ('heuristic_freshness_with_credentials = "yes"', "expected"),
    ],
)
def test_bad_security_keys_are_named(line: str, expected: str) -> None:
    key = line.split(" ", 1)[0]
    message = error_of(
        VALID.replace('node_secret_env = "MY_SECRET"', f'node_secret_env = "MY_SECRET"\n{line}')
    )
    assert f"[security] key '{key}'" in message
    assert expected in message


def test_an_unknown_region_is_named() -> None:
    message = error_of(
        VALID.replace('region = "eu"\nlisten = "127.0.1.1', 'region = "mars"\nlisten = "127.0.1.1')
    )
    assert "[[edges]] ('edge1') key 'region'" in message
    assert "no region named 'mars'" in message


def test_duplicate_names_are_refused() -> None:
    twice = VALID.replace(
        "[[edges]]",
        '[[shields]]\nname = "shield1"\nregion = "eu"\n'
        'listen = "127.0.0.1:9200"\nadmin_listen = "127.0.0.1:9201"\n'
        'cache_dir = "x"\ncache_size = "1GiB"\n\n[[edges]]',
    )
    message = error_of(twice)
    assert "[[shields]]" in message
    assert "the name 'shield1' is used twice" in message


def test_a_listen_address_used_twice_is_refused() -> None:
    message = error_of(VALID.replace('listen = "127.0.1.1:8000"', 'listen = "127.0.0.1:9100"'))
    assert "[[edges]] ('edge1') key 'listen'" in message
    assert "already used by shield1.listen" in message


def test_a_token_for_an_unknown_service_and_a_bad_hash_are_refused() -> None:
    message = error_of(VALID.replace('services = ["site"]', 'services = ["other"]'))
    assert "[purge_api] tokens ('ci') key 'services'" in message
    message = error_of(VALID.replace(hashlib.sha256(b"t").hexdigest(), "abc"))
    assert "key 'sha256'" in message


def test_not_toml_and_unreadable_files_are_errors(tmp_path: Path) -> None:
    assert "not valid TOML" in error_of("[[regions]\n")
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_fleet(missing)
    assert str(caught.value).startswith(f"{missing}: cannot read")


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_accepts_the_example_and_refuses_a_bad_file(tmp_path: Path) -> None:
    good = run_check(EXAMPLE)
    assert good.returncode == 0, good.stderr
    assert "ok (2 regions, 1 services, 2 shields, 2 edges)" in good.stdout

    bad_file = tmp_path / "bad.toml"
    bad_file.write_text(VALID.replace("198.51.100.0/24", "not-a-network"), encoding="utf-8")
    bad = run_check(bad_file)
    assert bad.returncode != 0
    assert (
        f"edgeshield: {bad_file}: [[regions]] #1 ('eu') key 'client_networks': "
        "'not-a-network' is not a CIDR network"
    ) in bad.stderr
    assert bad.stdout == ""


def test_the_readme_fleet_example_is_valid() -> None:
    readme = (EXAMPLE.parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    fleet = parse_fleet(block, "README.md")
    assert fleet.purge_api is not None and fleet.geo is not None
    assert [e.name for e in fleet.edges] == ["edge-eu"]


GEO_BASE = """
[[regions]]
name = "eu"
latitude = 50.0
longitude = 8.0

[geo]
dns_listen = "127.0.0.1:5353"
http_listen = "127.0.0.1:9400"
zone = "cdn.example.com"
"""


def test_geo_name_servers_with_glue() -> None:
    fleet = parse_fleet(
        GEO_BASE
        + 'nameservers = [{ name = "ns1.cdn.example.com", addresses = ["192.0.2.53"] },'
        + ' { name = "ns.provider.example" }]\n'
    )
    assert fleet.geo is not None
    assert [(ns.name, ns.addresses) for ns in fleet.geo.nameservers] == [
        ("ns1.cdn.example.com", ("192.0.2.53",)),
        ("ns.provider.example", ()),
    ]


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        ('{ name = "ns1.cdn.example.com" }', "addresses", "needs its addresses"),
        ('{ name = "ns1", addresses = ["192.0.2.1"] }', "name", "not a host name"),
        ('{ name = "ns1.x.example", addresses = ["nope"] }', "addresses", "not an IP address"),
    ],
)
def test_bad_geo_name_servers_name_the_key(entry: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_fleet(GEO_BASE + f"nameservers = [{entry}]\n", "f.toml")
    assert "[geo] nameservers #1" in str(caught.value)
    assert f"key {key!r}" in str(caught.value) and message in str(caught.value)


def test_connection_limits_have_defaults_and_can_be_set() -> None:
    edge = parse_fleet(VALID, "f.toml").edge("edge1")
    assert (edge.max_connections, edge.head_timeout, edge.keepalive_timeout) == (4096, 10.0, 20.0)
    text = VALID.replace(
        "cache_size = 536870912\n",
        "cache_size = 536870912\nmax_connections = 100\nhead_timeout = 2\n"
        "keepalive_timeout = 5.5\nworkers = 4\n",
    )
    edge = parse_fleet(text, "f.toml").edge("edge1")
    assert (edge.max_connections, edge.head_timeout, edge.keepalive_timeout) == (100, 2.0, 5.5)


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ("max_connections = 0", "max_connections", "at least 1"),
        ("max_connections = 2\nworkers = 3", "max_connections", "at least workers"),
        ('max_connections = "many"', "max_connections", "expected an integer"),
        ("head_timeout = 0.0", "head_timeout", "at least 0.1"),
        ("head_timeout = inf", "head_timeout", "finite"),
        ("keepalive_timeout = nan", "keepalive_timeout", "finite"),
        ("keepalive_timeout = true", "keepalive_timeout", "boolean"),
    ],
)
def test_bad_connection_limits_name_the_table_and_key(lines: str, key: str, message: str) -> None:
    text = VALID.replace("cache_size = 536870912\n", f"cache_size = 536870912\n{lines}\n")
    error = error_of(text)
    assert "[[edges]] #1 ('edge1')" in error and f"key {key!r}" in error, error
    assert message in error, error


def test_object_size_and_close_delimited_keys() -> None:
    fleet = parse_fleet(VALID)
    site = fleet.services[0]
    assert (site.max_object_size, site.cache_close_delimited) == (1024**3, False)
    # a node stores at most an eighth of its cache in one object
    assert object_limit(site, 1024**3) == 128 * 1024**2
    assert object_limit(site, 64 * 1024**3) == 1024**3
    text = VALID.replace(
        'hosts = ["www.example.com"]',
        'hosts = ["www.example.com"]\nmax_object_size = "5MiB"\ncache_close_delimited = true',
    )
    site = parse_fleet(text).services[0]
    assert (site.max_object_size, site.cache_close_delimited) == (5 * 1024**2, True)
    message = error_of(
        VALID.replace(
            'hosts = ["www.example.com"]', 'hosts = ["www.example.com"]\nmax_object_size = "huge"'
        )
    )
    assert "[[services]] #1 ('site') key 'max_object_size'" in message
    message = error_of(
        VALID.replace(
            'hosts = ["www.example.com"]', 'hosts = ["www.example.com"]\nmax_object_size = 0'
        )
    )
    assert "key 'max_object_size'" in message and "at least 1" in message


def test_scrub_rate_is_a_size_per_second() -> None:
    fleet = parse_fleet(VALID)
    assert fleet.shield("shield1").scrub_rate == 8 * 1024**2
    text = VALID.replace('cache_size = "1GiB"', 'cache_size = "1GiB"\nscrub_rate = 0', 1)
    assert parse_fleet(text).shield("shield1").scrub_rate == 0
    message = error_of(
        VALID.replace('cache_size = "1GiB"', 'cache_size = "1GiB"\nscrub_rate = "fast"', 1)
    )
    assert "[[shields]] #1 ('shield1') key 'scrub_rate'" in message


def test_max_stale_when_unreachable_defaults_to_a_day_and_refuses_negatives() -> None:
    (service,) = parse_fleet(VALID, "f.toml").services
    assert service.max_stale_when_unreachable == 86400
    off = VALID.replace(
        'hosts = ["www.example.com"]\n',
        'hosts = ["www.example.com"]\nmax_stale_when_unreachable = 0\n',
    )
    assert parse_fleet(off, "f.toml").services[0].max_stale_when_unreachable == 0
    bad = off.replace("max_stale_when_unreachable = 0", "max_stale_when_unreachable = -1")
    assert "key 'max_stale_when_unreachable'" in error_of(bad)


def test_node_secret_comes_from_the_variable_the_fleet_names() -> None:
    fleet = parse_fleet(VALID, "valid.toml")
    assert node_secret(fleet, {"MY_SECRET": "abc", "EDGESHIELD_NODE_SECRET": "x"}) == "abc"
    assert node_secret(fleet, {"EDGESHIELD_NODE_SECRET": "x"}) == ""


def test_the_conformance_keys_default_to_protecting_the_origin_and_are_checked() -> None:
    (service,) = parse_fleet(VALID, "f.toml").services
    assert service.honor_request_cache_control is False
    assert service.early_hints is False
    assert service.compress_min_size == 256
    on = VALID.replace(
        'hosts = ["www.example.com"]\n',
        'hosts = ["www.example.com"]\nhonor_request_cache_control = true\n'
        "early_hints = true\ncompress_min_size = 1000\n",
    )
    (service,) = parse_fleet(on, "f.toml").services
    assert (service.honor_request_cache_control, service.early_hints) == (True, True)
    assert service.compress_min_size == 1000
    bad = on.replace("compress_min_size = 1000", "compress_min_size = -1")
    assert "key 'compress_min_size'" in error_of(bad)
    bad = on.replace("early_hints = true", 'early_hints = "yes"')
    assert "key 'early_hints'" in error_of(bad)


def test_durable_objects_is_off_by_default_and_checked() -> None:
    (service,) = parse_fleet(VALID, "f.toml").services
    assert service.durable_objects is False
    on = VALID.replace(
        'hosts = ["www.example.com"]\n', 'hosts = ["www.example.com"]\ndurable_objects = true\n'
    )
    (service,) = parse_fleet(on, "f.toml").services
    assert service.durable_objects is True
    bad = on.replace("durable_objects = true", "durable_objects = 1")
    assert "key 'durable_objects'" in error_of(bad)
