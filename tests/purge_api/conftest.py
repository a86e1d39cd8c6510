"""Purge API tests run node components in this process: they need the node secret."""

from __future__ import annotations

import pytest

from tests.support.fleetfile import TEST_NODE_SECRET


@pytest.fixture(autouse=True)
def node_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node secret in the environment, as every node and the API have it."""
    monkeypatch.setenv("EDGESHIELD_NODE_SECRET", TEST_NODE_SECRET)
