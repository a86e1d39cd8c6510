"""Fixtures shared by every test package, and the Hypothesis profiles.

Hypothesis profiles: "ci" (loaded when CI=true) and "default" (anywhere else), both
without per-example deadlines and without the too-slow health check, because the
suite runs on small shared machines where generating an input can take long for
reasons that have nothing to do with the code under test. HYPOTHESIS_PROFILE picks
a profile by name (e.g. HYPOTHESIS_PROFILE=thorough for a long local run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.processes import NodeProcess

_SLOW_MACHINE_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=_SLOW_MACHINE_CHECKS,
)
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    suppress_health_check=_SLOW_MACHINE_CHECKS,
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    suppress_health_check=_SLOW_MACHINE_CHECKS,
)
settings.load_profile(
    os.environ.get(
        "HYPOTHESIS_PROFILE",
        "ci" if os.environ.get("CI", "").lower() in ("true", "1") else "default",
    )
)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """A list to append started NodeProcess objects to; each is stopped afterwards."""
    started: list[NodeProcess] = []
    yield started
    for node in reversed(started):
        node.stop()
