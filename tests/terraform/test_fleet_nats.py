"""modules/fleet renders a purge log on JetStream: replicas in [purge_api] listen, a [nats] table."""

from __future__ import annotations

import copy
from pathlib import Path

from fleet.config import parse_fleet
from tests.terraform.test_fleet_module import EXAMPLE, render
from tests.terraform.tfrun import outputs, require_ok


def test_replicas_and_nats_render_into_a_fleet_our_loader_reads(tmp_path: Path) -> None:
    arguments = copy.deepcopy(EXAMPLE)
    arguments["purge_api"].update(
        log="jetstream", replicas=["10.1.0.30:8000", "10.2.0.30:8000"]
    )
    arguments["nats"] = {
        "servers": ["nats://10.1.0.10:4222", "nats://10.2.0.10:4222", "nats://10.3.0.10:4222"],
        "creds_env": "NATS_CREDS",
    }
    result, root = render(tmp_path, arguments)
    require_ok(result, "apply")
    fleet = parse_fleet(outputs(root)["fleet_toml"], "rendered.toml")
    assert fleet.purge_api is not None and fleet.nats is not None
    assert fleet.purge_api.log == "jetstream"
    assert fleet.purge_api.replicas == ("10.1.0.30:8000", "10.2.0.30:8000")
    assert fleet.purge_api.urls == ("http://10.1.0.30:8000", "http://10.2.0.30:8000")
    assert fleet.nats.servers == tuple(arguments["nats"]["servers"])
    assert (fleet.nats.stream, fleet.nats.stream_replicas, fleet.nats.creds_env) == (
        "edgeshield-purges",
        3,
        "NATS_CREDS",
    )


def test_a_fleet_without_nats_renders_no_nats_table(tmp_path: Path) -> None:
    result, root = render(tmp_path, copy.deepcopy(EXAMPLE))
    require_ok(result, "apply")
    text = outputs(root)["fleet_toml"]
    assert "[nats]" not in text
    assert parse_fleet(text, "rendered.toml").purge_api.log == "sqlite"  # type: ignore[union-attr]
