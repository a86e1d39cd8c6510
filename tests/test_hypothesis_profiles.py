"""The Hypothesis profile tests/conftest.py loads suits a loaded shared machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]


def test_the_loaded_profile_has_no_deadline_and_no_too_slow_check() -> None:
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check


def test_ci_true_loads_the_ci_profile() -> None:
    code = (
        "import tests.conftest\n"
        "from hypothesis import settings\n"
        "print(settings.default.max_examples, settings.default.deadline)\n"
    )
    env = {**os.environ, "CI": "true"}
    env.pop("HYPOTHESIS_PROFILE", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["100", "None"]
