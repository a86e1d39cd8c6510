"""The chaos run, short: nodes and workers killed under load while purging (see
tests/chaos/chaos.py; `make chaos` runs it longer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.chaos import MUST_BE_ZERO, run_chaos

pytestmark = pytest.mark.timeout(150)


async def test_chaos_loses_and_corrupts_nothing(tmp_path: Path) -> None:
    report = await run_chaos(20.0, tmp_path)
    print(report)
    assert {kind: report[kind] for kind in MUST_BE_ZERO} == dict.fromkeys(MUST_BE_ZERO, 0), report
    assert report.get("ok", 0) > 100, report
    assert report.get("purges_complete", 0) >= 5, report
    assert (
        report.get("killed_workers", 0)
        + report.get("killed_edges", 0)
        + report.get("killed_shields", 0)
        >= 3
    ), report
