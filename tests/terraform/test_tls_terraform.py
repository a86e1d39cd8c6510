"""Terraform and TLS: the fleet module renders every TLS key, and the local module's
certificate script writes files that `edgeshield check` accepts for that fleet."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import main
from fleet.config import parse_fleet
from tests.terraform.test_aws import GOOD, plan_variables, written_file
from tests.terraform.test_fleet_module import render
from tests.support.fleetfile import TEST_NODE_SECRET, TEST_TOKEN
from tests.support.ports import free_port
from tests.terraform.test_local import (
    EDGE_ADDRESSES,
    free_port_everywhere,
    kill_leftovers,
    port_is_free,
    recorded_pids,
)
from tests.terraform.tfrun import (
    TERRAFORM_DIR,
    copy_terraform,
    diagnostics,
    hcl_vars,
    outputs,
    require_ok,
    tf,
)

CERTS_SCRIPT = TERRAFORM_DIR / "local" / "scripts" / "certs.py"


def https_get(url: str, host_name: str, path: str, context: ssl.SSLContext) -> bytes:
    """One HTTP/1.1 request over TLS to `url` (https://addr:port) with SNI and Host
    `host_name`; the whole answer."""
    host, _, port = url.removeprefix("https://").rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname=host_name) as sock,
    ):
        request = f"GET {path} HTTP/1.1\r\nHost: {host_name}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


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
                "cache_dir": str(tls_dir.parent / "shield-1"),
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
                "cache_dir": str(tls_dir.parent / "edge-eu"),
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


def cloud_init(tmp_path: Path, cert: str, key: str) -> str:
    root = tmp_path / "cloud-init"
    root.mkdir()
    config = {
        "module": {
            "node": {
                "source": str(TERRAFORM_DIR / "modules" / "cloud-init"),
                "fleet_toml": "# fleet\n",
                "role": "edge",
                "node_name": "edge-eu-1",
                "node_secret": "s" * 32,
                "package": "edgeshield==0.1.0",
                "tls_cert_pem": cert,
                "tls_key_pem": key,
            }
        },
        "output": {"user_data": {"value": "${nonsensitive(module.node.user_data)}"}},
    }
    (root / "main.tf.json").write_text(json.dumps(config), encoding="utf-8")
    require_ok(tf(root).init(), "init")
    require_ok(tf(root).apply(), "apply")
    user_data: str = outputs(root)["user_data"]
    return user_data


def test_cloud_init_writes_the_certificate_and_an_owner_only_key(tmp_path: Path) -> None:
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    key = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
    user_data = cloud_init(tmp_path, cert, key)
    assert written_file(user_data, "/etc/edgeshield/tls/site.crt").decode() == cert
    assert written_file(user_data, "/etc/edgeshield/tls/site.key").decode() == key
    key_entry = user_data.split("- path: /etc/edgeshield/tls/site.key", 1)[1].split("- path:")[0]
    assert 'permissions: "0600"' in key_entry
    assert '[chown, "edgeshield:edgeshield", /etc/edgeshield/tls/site.key]' in user_data


def test_cloud_init_without_a_certificate_writes_none(tmp_path: Path) -> None:
    assert "/etc/edgeshield/tls/" not in cloud_init(tmp_path, "", "")


def test_aws_takes_the_certificate_and_key_together(tmp_path: Path) -> None:
    good = {**GOOD, "tls_cert_pem": "cert", "tls_key_pem": "key"}
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    require_ok(plan_variables(tmp_path / "good", good), "plan")
    result = plan_variables(tmp_path / "bad", {**GOOD, "tls_cert_pem": "cert"})
    assert result.retcode != 0
    assert "set both or neither" in " ".join(diagnostics(result).split())


def test_aws_opens_https_to_edges() -> None:
    rules = (TERRAFORM_DIR / "aws" / "modules" / "site" / "main.tf").read_text()
    assert 'port = var.ports.edge_tls, protocol = "tcp", cidr = cidr, what = "HTTPS' in rules
    assert "edge_tls  = 443" in (TERRAFORM_DIR / "aws" / "main.tf").read_text()


@pytest.mark.timeout(240)
def test_local_fleet_with_tls_serves_https_through_every_edge(tmp_path: Path) -> None:
    workdir = copy_terraform(tmp_path) / "local"
    edge_hosts = list(EDGE_ADDRESSES.values())
    ports = {
        key: free_port_everywhere(edge_hosts) for key in ("edge", "edge_admin", "edge_tls")
    }
    ports |= {key: free_port() for key in ("purge_api", "dns", "geo_http", "origin")}
    # shields use shield + 2i, shield + 2i + 1, and shield_tls + i
    for key, span in (("shield", 4), ("shield_tls", 2)):
        base = free_port()
        while not all(port_is_free("127.0.0.1", base + i) for i in range(1, span)):
            base = free_port()
        ports[key] = base
    state_dir = tmp_path / "state"
    variables = hcl_vars(
        {
            "python": sys.executable,
            "state_dir": str(state_dir),
            "node_secret": TEST_NODE_SECRET + "-terraform",
            "purge_token_sha256": hashlib.sha256(TEST_TOKEN.encode()).hexdigest(),
            "ports": ports,
            "tls": True,
        }
    )
    command = tf(workdir)
    require_ok(command.init(), "init")
    pids: dict[str, int] = {}
    try:
        applied = command.apply(vars=variables)
        pids = recorded_pids(state_dir)
        require_ok(applied, "apply")
        out = outputs(workdir)
        context = ssl.create_default_context(cafile=out["ca_file"])
        assert set(out["edge_https_urls"]) == set(out["edge_urls"])
        for name, url in out["edge_https_urls"].items():
            # the edge may not have seen its shields healthy yet (they catch up on
            # purges first) and then fetches from the origin itself: a readiness wait
            # for a miss that went through a shield, each try a new key
            deadline = time.monotonic() + 20
            attempt = 0
            while True:
                attempt += 1
                answer = https_get(url, out["demo_host"], f"/?try={attempt}", context)
                assert answer.startswith(b"HTTP/1.1 200"), f"{name}: {answer[:200]!r}"
                status_line = next(
                    line
                    for line in answer.split(b"\r\n")
                    if line.lower().startswith(b"cache-status")
                )
                if b"shield-" in status_line or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            # the miss went to a shield over TLS (node_ca): a shield member comes first
            assert b"shield-" in status_line, status_line
    finally:
        pids = {**pids, **recorded_pids(state_dir)}
        destroyed = command.destroy(var=variables)
        leftovers = kill_leftovers(pids)
    assert destroyed.retcode == 0, diagnostics(destroyed)
    assert leftovers == []
