"""The cloud-init user data of a fleet whose purge log is on JetStream (terraform/aws).

A shield that hosts a NATS server gets Debian's nats-server and a systemd unit that
runs it with JetStream, clustered with the other sites' servers; a purge API replica
runs with its own `--listen`. The aws module's variables accept and refuse a purge log.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from cli.main import build_parser
from tests.terraform.test_aws import GOOD, plan_variables
from tests.terraform.tfrun import TERRAFORM_DIR, diagnostics, outputs, require_ok, tf

FLEET = '[[regions]]\nname = "eu"\nlatitude = 1.0\nlongitude = 2.0\n'


def render(tmp_path: Path, **arguments: Any) -> dict[str, Any]:
    """Apply modules/cloud-init with `arguments`; its user data and ExecStart."""
    root = tmp_path / "root"
    root.mkdir()
    config = {
        "module": {
            "node": {
                "source": str(TERRAFORM_DIR / "modules" / "cloud-init"),
                "fleet_toml": FLEET,
                "node_secret": "s" * 32,
                **arguments,
            }
        },
        "output": {
            "user_data": {"value": "${nonsensitive(module.node.user_data)}"},
            "exec_start": {"value": "${module.node.exec_start}"},
        },
    }
    (root / "main.tf.json").write_text(json.dumps(config), encoding="utf-8")
    require_ok(tf(root).init(), "init")
    require_ok(tf(root).apply(), "apply")
    return outputs(root)


def test_a_shield_hosting_nats_runs_a_clustered_jetstream_server(tmp_path: Path) -> None:
    out = render(
        tmp_path,
        role="shield",
        node_name="shield-eu-1",
        nats={
            "name": "nats-eu",
            "address": "10.10.0.20",
            "routes": ["nats-route://10.20.0.20:6222", "nats-route://10.30.0.20:6222"],
        },
    )
    user_data = out["user_data"]
    assert "  - nats-server\n" in user_data
    exec_line = next(
        line.strip()[len("ExecStart=") :]
        for line in user_data.splitlines()
        if line.strip().startswith("ExecStart=/usr/bin/nats-server")
    )
    argv = shlex.split(exec_line)
    assert argv[argv.index("-a") + 1] == "10.10.0.20"
    assert argv[argv.index("-p") + 1] == "4222" and "-js" in argv
    assert argv[argv.index("--cluster") + 1] == "nats://10.10.0.20:6222"
    assert argv[argv.index("--routes") + 1].split(",") == [
        "nats-route://10.20.0.20:6222",
        "nats-route://10.30.0.20:6222",
    ]
    assert "enable, --now, edgeshield-nats.service" in user_data
    # the shield itself still runs as before
    assert build_parser().parse_args(shlex.split(out["exec_start"])[1:]).command == "shield"


def test_without_nats_the_user_data_has_none(tmp_path: Path) -> None:
    user_data = render(tmp_path, role="shield", node_name="shield-eu-1")["user_data"]
    assert "nats" not in user_data


def test_a_purge_api_replica_listens_on_its_own_address(tmp_path: Path) -> None:
    out = render(tmp_path, role="purge-api", listen="10.20.0.30:8000")
    args = build_parser().parse_args(shlex.split(out["exec_start"])[1:])
    assert (args.command, args.listen) == ("purge-api", "10.20.0.30:8000")


def test_the_aws_variables_take_a_purge_log_and_refuse_others(tmp_path: Path) -> None:
    good = {**GOOD, "purge_log": "jetstream", "nats_servers": ["nats://10.9.0.5:4222"]}
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    require_ok(plan_variables(tmp_path / "good", good), "plan")
    bad = plan_variables(tmp_path / "bad", {**GOOD, "purge_log": "raft"})
    assert bad.retcode != 0
    assert 'purge_log must be "sqlite" or "jetstream"' in diagnostics(bad)
