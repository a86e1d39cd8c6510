"""modules/fleet renders a fleet.toml that our own loader accepts, value for value."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fleet.config import parse_fleet
from tests.terraform.tfrun import TERRAFORM_DIR, diagnostics, outputs, require_ok, tf

TOKEN_SHA256 = hashlib.sha256(b"example-token").hexdigest()

EXAMPLE: dict[str, Any] = {
    "regions": [
        {"name": "eu", "latitude": 50.11, "longitude": 8.68, "client_networks": ["10.1.0.0/16"]},
        {"name": "us", "latitude": 40, "longitude": -74.01},
    ],
    "services": [
        {
            "name": "site",
            "hosts": ["www.example.com", "Static.Example.com"],
            "origins": ["http://10.0.0.5:8080", "https://origin.example.com"],
            "negative_ttl": 10,
            "origin_fallback": False,
            "load_balancing": "least_outstanding",
            "health_check_path": "/healthz",
            "read_timeout": 12.5,
            "durable_objects": True,
            "max_stale_when_unreachable": 600,
            "max_object_size": "64MiB",
            "cache_close_delimited": True,
            "honor_request_cache_control": True,
            "compress_min_size": 1000,
            "early_hints": True,
            "cache_key": {"sort_query": False, "drop_params": ["utm_*"]},
        },
        {"name": "api", "hosts": ["api.example.com"], "origins": ["http://10.0.0.6:80"]},
    ],
    "shields": [
        {
            "name": "shield-eu",
            "region": "eu",
            "listen": "10.1.0.10:8080",
            "admin_listen": "10.1.0.10:9090",
            "cache_dir": '/var/cache/edgeshield/shield "eu" \\ one',
            "cache_size": "10GiB",
            "memory_size": "512MiB",
            "workers": 2,
        }
    ],
    "edges": [
        {
            "name": "edge-eu",
            "region": "eu",
            "listen": "10.1.0.20:80",
            "admin_listen": "10.1.0.20:9090",
            "cache_dir": "/var/cache/edgeshield/edge",
            "public_address": "198.51.100.7",
        },
        {
            "name": "edge-us",
            "region": "us",
            "listen": "[::1]:8081",
            "admin_listen": "[::1]:9091",
            "cache_dir": "/var/cache/edgeshield/edge-us",
            "cache_size": "500MB",
        },
    ],
    "purge_api": {
        "listen": "10.1.0.30:8000",
        "data_dir": "/var/lib/edgeshield/purge",
        "rate_limit_per_minute": 60,
        "tokens": [
            {"name": "ci", "sha256": TOKEN_SHA256.upper(), "services": ["site"]},
            {"name": "ops", "sha256": TOKEN_SHA256, "services": ["*"]},
        ],
    },
    "geo": {
        "dns_listen": "0.0.0.0:53",
        "http_listen": "10.1.0.40:8053",
        "zone": "CDN.Example.NET.",
        "ttl": 20,
        "default_region": "eu",
        "coverage_zones": [{"network": "192.0.2.0/24", "region": "us"}],
        "nameservers": [
            {"name": "ns1.cdn.example.com", "addresses": ["192.0.2.53", "2001:db8::53"]},
            {"name": "ns.provider.example"},
        ],
    },
    "node_secret_env": "FLEET_SECRET",
}


def render(tmp_path: Path, arguments: dict[str, Any]) -> Any:
    """Apply a root module that calls modules/fleet with `arguments`; the result."""
    root = tmp_path / "root"
    root.mkdir()
    config = {
        "module": {"fleet": {"source": str(TERRAFORM_DIR / "modules" / "fleet"), **arguments}},
        "output": {
            name: {"value": f"${{module.fleet.{name}}}"}
            for name in (
                "fleet_toml",
                "edge_urls",
                "edge_public_addresses",
                "edges_by_region",
                "purge_api_url",
                "dns_listen",
                "zone",
            )
        },
    }
    (root / "main.tf.json").write_text(json.dumps(config), encoding="utf-8")
    require_ok(tf(root).init(), "init")
    return tf(root).apply(), root


def test_rendered_example_loads_with_every_value_intact(tmp_path: Path) -> None:
    result, root = render(tmp_path, EXAMPLE)
    require_ok(result, "apply")
    out = outputs(root)

    fleet = parse_fleet(out["fleet_toml"], "rendered.toml")

    assert [(r.name, r.latitude, r.longitude, r.client_networks) for r in fleet.regions] == [
        ("eu", 50.11, 8.68, ("10.1.0.0/16",)),
        ("us", 40.0, -74.01, ()),
    ]
    site = fleet.service("site")
    assert site is not None
    assert site.hosts == ("www.example.com", "static.example.com")
    assert site.origins == ("http://10.0.0.5:8080", "https://origin.example.com")
    assert (site.negative_ttl, site.origin_fallback, site.load_balancing) == (
        10,
        False,
        "least_outstanding",
    )
    assert (site.health_check_path, site.read_timeout) == ("/healthz", 12.5)
    assert site.durable_objects is True
    assert (site.max_stale_when_unreachable, site.max_object_size) == (600, 64 * 1024**2)
    assert (site.cache_close_delimited, site.honor_request_cache_control) == (True, True)
    assert (site.compress_min_size, site.early_hints) == (1000, True)
    assert fleet.service("api").durable_objects is False  # left out: the default
    assert (site.cache_key.sort_query, site.cache_key.drop_params) == (False, ("utm_*",))
    shield = fleet.shield("shield-eu")
    assert shield.cache_dir == '/var/cache/edgeshield/shield "eu" \\ one'
    assert (shield.cache_size, shield.memory_size, shield.workers) == (
        10 * 1024**3,
        512 * 1024**2,
        2,
    )
    assert fleet.edge("edge-eu").public_address == "198.51.100.7"
    assert fleet.edge("edge-us").listen == "[::1]:8081"
    assert fleet.edge("edge-us").public_address == "::1"
    assert fleet.edge("edge-us").cache_size == 500 * 1000**2
    assert fleet.purge_api is not None
    assert fleet.purge_api.rate_limit_per_minute == 60
    assert [(t.name, t.sha256, t.services) for t in fleet.purge_api.tokens] == [
        ("ci", TOKEN_SHA256, ("site",)),
        ("ops", TOKEN_SHA256, ("*",)),
    ]
    assert fleet.geo is not None
    assert (fleet.geo.zone, fleet.geo.ttl, fleet.geo.default_region) == (
        "cdn.example.net",
        20,
        "eu",
    )
    assert [(z.network, z.region) for z in fleet.geo.coverage_zones] == [("192.0.2.0/24", "us")]
    assert [(ns.name, ns.addresses) for ns in fleet.geo.nameservers] == [
        ("ns1.cdn.example.com", ("192.0.2.53", "2001:db8::53")),
        ("ns.provider.example", ()),
    ]
    assert fleet.security.node_secret_env == "FLEET_SECRET"
    assert out["edge_urls"] == {"edge-eu": "http://10.1.0.20:80", "edge-us": "http://[::1]:8081"}
    assert out["edge_public_addresses"] == {"edge-eu": "198.51.100.7", "edge-us": "::1"}
    assert out["edges_by_region"] == {"eu": ["edge-eu"], "us": ["edge-us"]}
    assert (out["purge_api_url"], out["dns_listen"], out["zone"]) == (
        "http://10.1.0.30:8000",
        "0.0.0.0:53",
        "cdn.example.net",
    )


def test_minimal_fleet_leaves_optional_tables_out(tmp_path: Path) -> None:
    minimal = {
        "regions": [{"name": "eu", "latitude": 1, "longitude": 2}],
        "services": [{"name": "s", "hosts": ["a.example"], "origins": ["http://127.0.0.1:1"]}],
    }
    result, root = render(tmp_path, minimal)
    require_ok(result, "apply")

    fleet = parse_fleet(outputs(root)["fleet_toml"])

    assert (fleet.purge_api, fleet.geo, fleet.shields, fleet.edges) == (None, None, (), ())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"edges": [{**EXAMPLE["edges"][0], "region": "mars"}]}, "unknown regions: mars"),
        (
            {"shields": [{**EXAMPLE["shields"][0], "cache_size": "lots"}]},
            "cache_size must be a size",
        ),
        (
            {
                "purge_api": {
                    **EXAMPLE["purge_api"],
                    "tokens": [{"name": "t", "sha256": "abc", "services": ["site"]}],
                }
            },
            "64 hex digits",
        ),
        (
            {"edges": [EXAMPLE["edges"][0], {**EXAMPLE["edges"][1], "name": "edge-eu"}]},
            "must be unique",
        ),
        (
            {"services": [{"name": "s", "hosts": ["a"], "origins": ["ftp://x"]}]},
            "Origins must be URLs",
        ),
        (
            {"edges": [EXAMPLE["edges"][0], {**EXAMPLE["edges"][1], "listen": "10.1.0.20:80"}]},
            "used by more than one listener: 10.1.0.20:80",
        ),
    ],
)
def test_mistakes_fail_the_plan_with_a_message(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    result, _ = render(tmp_path, {**EXAMPLE, **change})

    assert result.retcode != 0
    assert message in " ".join(diagnostics(result).split())
