"""An origin that stays down is logged by state change, not once per request."""

from __future__ import annotations

import logging

import pytest
from multidict import CIMultiDict

from edge.statelog import StateLog
from edge.upstream import OriginPool, UpstreamError, make_session
from fleet.config import Service
from tests.support.origin import OriginServer


async def test_an_origin_down_for_many_requests_is_logged_once_then_back_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    origin = OriginServer().start()
    origin.route("/a", body=b"ok")
    origin.stop()
    service = Service(name="site", hosts=("www.example.com",), origins=(origin.url,))
    session = make_session(connect_timeout=1.0)
    pool = OriginPool(service, session)
    try:
        with caplog.at_level(logging.WARNING, logger="edgeshield.upstream"):
            for _ in range(200):
                with pytest.raises(UpstreamError) as caught:
                    await pool.request("GET", "/a", _headers(), None)
                assert caught.value.unreachable
            down = [r.getMessage() for r in caplog.records]
            origin.restart()
            response = await pool.request("GET", "/a", _headers(), None)
            response.release()
        assert response.status == 200
        lines = [r.getMessage() for r in caplog.records]
    finally:
        await session.close()
        origin.close()
    assert down == [f"origin {origin.url} ejected for 5s"], down
    assert len(lines) == 2 and lines[1].startswith(f"origin {origin.url} is back after"), lines


def test_a_failure_that_goes_on_is_logged_again_with_a_count_every_so_often(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    state = StateLog(logging.getLogger("test.statelog"), "thing", every=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.statelog"):
        for step in range(250):
            now[0] = step * 0.1  # 25 s of failures, ten a second
            state.failed("refused")
        state.recovered()
        state.recovered()
    assert [r.getMessage() for r in caplog.records] == [
        "thing refused",
        "thing still failing after 10s (101 failures): refused",
        "thing still failing after 20s (201 failures): refused",
        "thing is back after 25s (250 failures)",
    ]


def _headers() -> CIMultiDict[str]:
    return CIMultiDict({"Host": "www.example.com"})


def test_a_failed_health_check_is_logged_once_even_during_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    state = StateLog(logging.getLogger("edgeshield.test"), "origin o", clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="edgeshield.test"):
        for _ in range(50):
            state.failed("ejected for 5s")
        state.turned_unhealthy("failed its health check")
        for _ in range(50):
            state.failed("ejected for 5s")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["origin o ejected for 5s", "origin o failed its health check"], lines
