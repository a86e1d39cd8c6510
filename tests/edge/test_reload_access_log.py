"""SIGHUP's plan for a changed `access_log`: refused, naming the key (the log's file is
open; a changed destination takes a restart), while the same file is reopened."""

from __future__ import annotations

from pathlib import Path

from edge.reload import plan_reload
from fleet.config import load_fleet
from tests.fleet.test_config import VALID


def with_log(setting: str) -> str:
    return VALID.replace(
        "cache_size = 536870912\n", f'cache_size = 536870912\naccess_log = "{setting}"\n'
    )


def test_a_changed_access_log_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(with_log("logs/a.log"))
    current = load_fleet(path)
    node = current.edge("edge1")
    assert plan_reload(str(path), current, node).refused == ""
    path.write_text(with_log("logs/b.log"))
    refused = plan_reload(str(path), current, node).refused
    assert "access_log changed" in refused and "restart" in refused, refused
