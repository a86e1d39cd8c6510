"""terraform/local's state directory: removed on destroy only when the module made it.

The helper script's `claim-dir` and `release-dir` run as Terraform runs them (a
process each); `test_local.py` shows the whole apply and destroy leaving nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "terraform" / "local" / "scripts" / "node.py"


def helper(action: str, path: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), action, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def test_a_directory_the_module_made_is_removed_with_what_it_holds(tmp_path: Path) -> None:
    state = tmp_path / "run"
    helper("claim-dir", state)
    (state / "node-secret.env").write_text("EDGESHIELD_NODE_SECRET=s\n")
    (state / "cache" / "edge-1").mkdir(parents=True)
    assert "removed" in helper("release-dir", state)
    assert not state.exists()


def test_a_directory_that_existed_before_is_left_as_it_was(tmp_path: Path) -> None:
    state = tmp_path / "mine"
    state.mkdir()
    (state / "keep.txt").write_text("the operator's\n")
    helper("claim-dir", state)
    helper("release-dir", state)
    assert (state / "keep.txt").read_text() == "the operator's\n"
    assert sorted(p.name for p in state.iterdir()) == ["keep.txt"]
