"""What can be checked of terraform/aws without downloading the AWS provider.

`terraform validate` and `plan` of aws/ need the hashicorp/aws provider, which CI does
not download. Checked here instead: its variables' validation blocks (variables.tf
alone, which uses built-in functions only, planned with good and bad values), and the
cloud-init user data every machine boots with (modules/cloud-init, rendered with a
fleet.toml from modules/fleet): the fleet file it writes loads with our loader, and
the systemd unit runs a command our CLI accepts for the machine's role.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from cli.main import build_parser
from fleet.config import parse_fleet
from tests.terraform.tfrun import TERRAFORM_DIR, diagnostics, hcl_vars, outputs, require_ok, tf

GOOD: dict[str, Any] = {
    "sites": [
        {
            "name": "eu",
            "aws_region": "eu-central-1",
            "latitude": 50.1,
            "longitude": 8.7,
            "vpc_cidr": "10.10.0.0/16",
            "edges": 2,
            "shields": 1,
        },
        {
            "name": "us",
            "aws_region": "us-east-1",
            "latitude": 38.9,
            "longitude": -77.0,
            "vpc_cidr": "10.20.0.0/16",
            "shields": 1,
            "client_networks": ["198.51.100.0/24"],
        },
        {
            "name": "ap",
            "aws_region": "ap-northeast-1",
            "latitude": 35.7,
            "longitude": 139.7,
            "vpc_cidr": "10.30.0.0/16",
            "geo": False,
        },
    ],
    "zone": "cdn.example.com",
    "services": [
        {"name": "www", "hosts": ["www.example.com"], "origins": ["https://origin.example.com"]}
    ],
    "purge_tokens": [
        {"name": "ci", "sha256": hashlib.sha256(b"t").hexdigest(), "services": ["www"]}
    ],
    "node_secret": "x" * 32,
    "edgeshield_package": "https://downloads.example.com/edgeshield-0.1.0-py3-none-any.whl",
}


def plan_variables(tmp_path: Path, values: dict[str, Any]) -> Any:
    """Plan a root module made of aws/variables.tf alone, with `values`."""
    root = tmp_path / "vars"
    root.mkdir()
    shutil.copy(TERRAFORM_DIR / "aws" / "variables.tf", root / "variables.tf")
    require_ok(tf(root).init(), "init")
    return tf(root).plan(vars=hcl_vars(values))


def test_good_variables_pass_validation(tmp_path: Path) -> None:
    require_ok(plan_variables(tmp_path, GOOD), "plan")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sites": GOOD["sites"][:2]}, "Exactly three sites"),
        (
            {
                "sites": [
                    GOOD["sites"][0],
                    {**GOOD["sites"][1], "vpc_cidr": "10.10.0.0/16"},
                    GOOD["sites"][2],
                ]
            },
            "distinct IPv4 CIDR",
        ),
        (
            {"sites": [{**GOOD["sites"][0], "aws_region": "Frankfurt"}, *GOOD["sites"][1:]]},
            "AWS region name",
        ),
        ({"sites": [{**s, "shields": 0} for s in GOOD["sites"]]}, "at least one shield"),
        (
            {"sites": [{**s, "geo": False} for s in GOOD["sites"]]},
            "At least one site must run GeoDNS",
        ),
        ({"purge_api_site": "mars"}, "purge_api_site must be the name of one of the sites"),
        ({"zone": "not a zone"}, "zone must be a domain name"),
        (
            {"purge_tokens": [{"name": "ci", "sha256": "plaintext-token", "services": ["www"]}]},
            "never the token",
        ),
        ({"node_secret": "short"}, "at least 32 characters"),
        ({"ssh_cidrs": ["0.0.0.0/0"]}, "not 0.0.0.0/0"),
        ({"services": [{"name": "Www!", "hosts": ["a"], "origins": ["http://o"]}]}, "DNS labels"),
        ({"mmdb_url": "http://example.com/db.mmdb"}, "https://"),
        ({"edgeshield_package": "edgeshield==0.1.0"}, "edgeshield is not on PyPI"),
    ],
)
def test_bad_variables_are_refused_with_a_message(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    result = plan_variables(tmp_path, {**GOOD, **change})

    assert result.retcode != 0
    assert message in " ".join(diagnostics(result).split())


def render_user_data(tmp_path: Path, role: str, node: str) -> tuple[str, str]:
    """(user_data, exec_start) of modules/cloud-init for `role`, with a small fleet."""
    root = tmp_path / "cloud-init"
    root.mkdir()
    config = {
        "module": {
            "fleet": {
                "source": str(TERRAFORM_DIR / "modules" / "fleet"),
                "regions": [{"name": "eu", "latitude": 50.1, "longitude": 8.7}],
                "services": GOOD["services"],
                "shields": [
                    {
                        "name": "shield-eu-1",
                        "region": "eu",
                        "listen": "10.10.0.20:8080",
                        "admin_listen": "10.10.0.20:9090",
                        "cache_dir": "/var/cache/edgeshield/s",
                    }
                ],
                "edges": [
                    {
                        "name": "edge-eu-1",
                        "region": "eu",
                        "listen": "10.10.0.10:80",
                        "admin_listen": "10.10.0.10:9090",
                        "cache_dir": "/var/cache/edgeshield/e",
                        "public_address": "203.0.113.10",
                    }
                ],
                "purge_api": {
                    "listen": "10.10.0.30:8000",
                    "data_dir": "/var/lib/edgeshield/p",
                    "tokens": GOOD["purge_tokens"],
                },
                "geo": {
                    "dns_listen": "0.0.0.0:53",
                    "http_listen": "0.0.0.0:8053",
                    "zone": GOOD["zone"],
                    "mmdb": "/var/lib/edgeshield/geo.mmdb",
                },
            },
            "node": {
                "source": str(TERRAFORM_DIR / "modules" / "cloud-init"),
                "fleet_toml": "${module.fleet.fleet_toml}",
                "role": role,
                "node_name": node,
                "node_secret": "s" * 32,
                "package": "edgeshield==0.1.0",
            },
        },
        "output": {
            "user_data": {"value": "${nonsensitive(module.node.user_data)}"},
            "exec_start": {"value": "${module.node.exec_start}"},
        },
    }
    (root / "main.tf.json").write_text(json.dumps(config), encoding="utf-8")
    require_ok(tf(root).init(), "init")
    require_ok(tf(root).apply(), "apply")
    out = outputs(root)
    return out["user_data"], out["exec_start"]


def written_file(user_data: str, path: str) -> bytes:
    """The decoded content of a base64 `write_files` entry of a cloud-config."""
    match = re.search(rf"- path: {re.escape(path)}\n\s+encoding: b64\n\s+content: (\S+)", user_data)
    assert match, f"{path} is not written by the user data"
    return base64.b64decode(match.group(1))


@pytest.mark.parametrize(
    ("role", "node", "command"),
    [
        ("edge", "edge-eu-1", "edge"),
        ("shield", "shield-eu-1", "shield"),
        ("purge-api", "", "purge-api"),
        ("geo", "", "geo"),
    ],
)
def test_user_data_installs_the_fleet_file_and_runs_the_role(
    tmp_path: Path, role: str, node: str, command: str
) -> None:
    user_data, exec_start = render_user_data(tmp_path, role, node)

    assert user_data.startswith("#cloud-config\n")
    fleet = parse_fleet(written_file(user_data, "/etc/edgeshield/fleet.toml").decode())
    assert [e.public_address for e in fleet.edges] == ["203.0.113.10"]
    secret = written_file(user_data, "/etc/edgeshield/node.env").decode()
    assert secret == f"{fleet.security.node_secret_env}={'s' * 32}\n"
    assert f"ExecStart={exec_start}\n" in user_data
    assert "EnvironmentFile=/etc/edgeshield/node.env" in user_data
    program, *argv = shlex.split(exec_start)
    assert program == "/opt/edgeshield/bin/edgeshield"
    args = build_parser().parse_args(argv)
    assert args.command == command
    assert args.config == "/etc/edgeshield/fleet.toml"
    if node:
        assert args.node == node
    assert ("geo, build-mmdb" in user_data) == (role == "geo")
    assert '"edgeshield==0.1.0"' in user_data
