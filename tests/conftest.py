"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import NodeProcess


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """A list to append started NodeProcess objects to; each is stopped afterwards."""
    started: list[NodeProcess] = []
    yield started
    for node in reversed(started):
        node.stop()
