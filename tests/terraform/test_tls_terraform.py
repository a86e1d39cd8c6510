"""Terraform and TLS: the fleet module renders every TLS key, and the local module's
certificate script writes files that `edgeshield check` accepts for that fleet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli.main import main
from fleet.config import parse_fleet
from tests.terraform.test_fleet_module import render
from tests.terraform.tfrun import TERRAFORM_DIR, outputs, require_ok

CERTS_SCRIPT = TERRAFORM_DIR / "local" / "scripts" / "certs.py"


def tls_arguments(tls_dir: Path) -> dict[str, object]:
    cert, key = str(tls_dir / "site.crt"), str(tls_dir / "site.key")
    return {
        "regions": [{"name": "eu", "latitude": 1, "longitude": 2}],
        "services": [
            {
                "name": "s",
                "hosts": ["www.demo.test"],
                "origins": ["http://127.0.0.1:1"],
                "tls_cert": cert,
                "tls_key": key,
                "https_redirect": True,
                "hsts_max_age": 600,
                "origin_tls_verify": True,
            }
        ],
        "shields": [
            {
                "name": "shield-1",
                "region": "eu",
                "listen": "127.0.0.1:47100",
                "admin_listen": "127.0.0.1:47101",
                "cache_dir": "/tmp/x",
                "tls_listen": "127.0.0.1:47150",
                "tls_cert": cert,
                "tls_key": key,
            }
        ],
        "edges": [
            {
                "name": "edge-eu",
                "region": "eu",
                "listen": "127.0.1.1:47080",
                "admin_listen": "127.0.1.1:47081",
                "cache_dir": "/tmp/y",
                "tls_listen": "127.0.1.1:47443",
            }
        ],
        "tls": {
            "node_ca": str(tls_dir / "ca.pem"),
            "tls_min_version": "1.3",
            "alpn": ["h2", "http/1.1"],
        },
    }


def test_fleet_module_renders_tls_keys_that_check_accepts(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    subprocess.run(
        [sys.executable, str(CERTS_SCRIPT), str(tls_dir), "www.demo.test", "127.0.0.1,127.0.1.1"],
        check=True,
        capture_output=True,
    )
    assert (tls_dir / "site.key").stat().st_mode & 0o077 == 0
    result, root = render(tmp_path, tls_arguments(tls_dir))
    require_ok(result, "apply")
    text = outputs(root)["fleet_toml"]
    fleet = parse_fleet(text)
    service = fleet.services[0]
    assert (service.tls_cert, service.https_redirect, service.hsts_max_age) == (
        str(tls_dir / "site.crt"),
        True,
        600,
    )
    assert fleet.edges[0].tls_listen == "127.0.1.1:47443"
    assert fleet.shields[0].tls_cert == str(tls_dir / "site.crt")
    assert fleet.security.node_ca == str(tls_dir / "ca.pem")
    assert (fleet.security.tls_min_version, fleet.security.alpn) == ("1.3", ("h2", "http/1.1"))
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 0
