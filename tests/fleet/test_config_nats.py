"""The fleet file's JetStream purge log: `[purge_api] log`, a `listen` list, `[nats]`."""

from __future__ import annotations

import pytest

from fleet.config import ConfigError, nats_creds_file, parse_fleet

BASE = (
    '[[regions]]\nname = "eu"\nlatitude = 1.0\nlongitude = 2.0\n'
    '[[services]]\nname = "www"\nhosts = ["www.example.com"]\norigins = ["http://127.0.0.1:9"]\n'
)


def fleet_with(purge_api: str, nats: str = "") -> str:
    return f'{BASE}[purge_api]\ndata_dir = "state"\n{purge_api}\n{nats}'


def test_replicas_on_jetstream_load_with_their_defaults() -> None:
    fleet = parse_fleet(
        fleet_with(
            'listen = ["127.0.0.1:9300", "10.0.0.2:9300"]\nlog = "jetstream"',
            '[nats]\nservers = ["nats://10.0.0.5:4222", "tls://n2.example:4222"]',
        )
    )
    assert fleet.purge_api is not None and fleet.nats is not None
    assert fleet.purge_api.listen == "127.0.0.1:9300"
    assert fleet.purge_api.urls == ("http://127.0.0.1:9300", "http://10.0.0.2:9300")
    assert (fleet.nats.stream, fleet.nats.stream_replicas, fleet.nats.creds_env) == (
        "edgeshield-purges",
        2,
        "",
    )


def test_sqlite_is_the_default_and_one_address_is_one_url() -> None:
    fleet = parse_fleet(fleet_with('listen = "127.0.0.1:9300"'))
    assert fleet.purge_api is not None
    assert (fleet.purge_api.log, fleet.purge_api.urls) == ("sqlite", ("http://127.0.0.1:9300",))
    assert fleet.nats is None


@pytest.mark.parametrize(
    ("purge_api", "nats", "where", "message"),
    [
        ('listen = "127.0.0.1:1"\nlog = "raft"', "", "[purge_api] key 'log'", "sqlite"),
        ('listen = "127.0.0.1:1"\nlog = "jetstream"', "", "[purge_api] key 'log'", "[nats]"),
        ("listen = []", "", "[purge_api] key 'listen'", "at least one"),
        ('listen = ["127.0.0.1:1", "127.0.0.1:1"]', "", "[purge_api] key 'listen'", "twice"),
        ('listen = ["127.0.0.1:1", "127.0.0.1:2"]', "", "[purge_api] key 'listen'", "jetstream"),
        ('listen = ["nowhere"]', "", "[purge_api] key 'listen'", ""),
        ('listen = "127.0.0.1:1"', '[nats]\nservers = ["http://x:1"]', "[nats] key 'servers'", ""),
        ('listen = "127.0.0.1:1"', "[nats]\nservers = []", "[nats] key 'servers'", ""),
        ('listen = "127.0.0.1:1"', '[nats]\nstream = "a.b"', "[nats] key 'stream'", ""),
        ('listen = "127.0.0.1:1"', "[nats]\nreplicas = 7", "[nats] key 'replicas'", "5"),
        ('listen = "127.0.0.1:1"', '[nats]\ncreds_env = "a b"', "[nats] key 'creds_env'", ""),
        ('listen = "127.0.0.1:1"', '[nats]\npassword = "x"', "[nats]", "password"),
    ],
)
def test_mistakes_name_the_table_and_key(
    purge_api: str, nats: str, where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_fleet(fleet_with(purge_api, nats), "f.toml")
    assert where in str(error.value)
    assert message in str(error.value)


def test_credentials_come_from_the_variable_named_never_the_file() -> None:
    fleet = parse_fleet(
        fleet_with('listen = "127.0.0.1:1"', '[nats]\ncreds_env = "NATS_CREDS"'), "f.toml"
    )
    assert nats_creds_file(fleet, {"NATS_CREDS": "/etc/nats/purge.creds"}) == (
        "/etc/nats/purge.creds"
    )
    assert nats_creds_file(fleet, {}) is None
