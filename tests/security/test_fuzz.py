"""Fuzzing running processes: an edge with raw request heads, the purge API with bodies.

The edge is a real process in front of a real origin; each example is a new TCP
connection carrying a head drawn by `tests.support.fuzz.request_heads` (odd methods,
targets, versions, field names and values with bytes a library would refuse). Every
answer must be a well-formed response head with a status other than 500 (no 5xx at
all but 502/503/504, which speak of the upstream, and 505 for a version other than
HTTP/1.x) or a clean close; afterwards the
node is still alive and serves a normal request. The purge API gets random JSON and
random bytes as bodies (and odd Content-Type and Idempotency-Key fields): never a
5xx, and it is alive afterwards.

Example counts are small by default so the module runs in about 20 s; a long run:

    EDGESHIELD_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/security/test_fuzz.py -q

sets the number of examples of each fuzz test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.config import EdgeConfig
from tests.support.connection_limits import limits_fleet
from tests.support.fuzz import announces_a_body, exchange, request_heads
from tests.support.origin import OriginServer
from tests.support.processes import NodeProcess
from tests.support.purge_api_input import PurgeApi, post, running_purge_api

EXAMPLES = int(os.environ.get("EDGESHIELD_FUZZ_EXAMPLES", "1000"))
#: 5xx answers that are right: the upstream's failures, and 505 for "HTTP/2.0" heads
ALLOWED_5XX = {502, 503, 504, 505}

fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class RunningEdge:
    """The fuzzed edge: its config and process."""

    config: EdgeConfig
    process: NodeProcess

    @property
    def address(self) -> tuple[str, int]:
        return self.config.listen_host, self.config.listen_port


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEdge]:
    root = tmp_path_factory.mktemp("fuzz-edge")
    origin = OriginServer().start()
    for path in ("/", "/a", "/x"):
        origin.route(path, headers={"Cache-Control": "max-age=60"}, body=b"origin body\n")
    process: NodeProcess | None = None
    try:
        # a short head deadline: a head that never ends costs the run little
        fleet = limits_fleet(root, origin.url, ["head_timeout = 2.0\nkeepalive_timeout = 5.0\n"])
        config = fleet.edges[0]
        process = NodeProcess(
            ["edge", "--config", fleet.source, "--node", config.name],
            root / "edge.log",
            env={"EDGESHIELD_ACCESS_LOG": "0"},
        ).start()
        process.wait_listening(config.listen)
        yield RunningEdge(config, process)
    finally:
        if process is not None:
            process.stop()
        origin.close()


@pytest.fixture(scope="module")
def purge_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PurgeApi]:
    yield from running_purge_api(tmp_path_factory.mktemp("fuzz-purge"))


def assert_alive_and_serving(process: NodeProcess, address: tuple[str, int], request: bytes) -> int:
    """The process runs and answers `request`; its status."""
    assert process.proc is not None and process.proc.poll() is None, process.log()[-3000:]
    outcome = exchange(address, request, timeout=15.0)
    assert outcome.status is not None, outcome
    return outcome.status


def test_request_heads_never_get_a_500_or_a_malformed_answer(edge: RunningEdge) -> None:
    @fuzz_settings
    @given(request_heads())
    def one_head(request: bytes) -> None:
        outcome = exchange(edge.address, request)
        if outcome.status is None:
            # nothing said: a clean close, or a server rightly waiting for a body
            assert outcome.closed or announces_a_body(request), request[:300]
            return
        assert outcome.status != 500, (request[:300], outcome.data[:300])
        assert outcome.status < 500 or outcome.status in ALLOWED_5XX, (
            request[:300],
            outcome.data[:300],
        )

    one_head()
    status = assert_alive_and_serving(
        edge.process,
        edge.address,
        b"GET /a HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
    )
    assert status == 200
    assert "Traceback" not in edge.process.log(), edge.process.log()[-3000:]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["/a", "/", "http://www.example.com/x", "https://evil.example/", "//x"]),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(
            st.sampled_from(["urls", "prefixes", "tags", "all", "soft"]) | st.text(max_size=10),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)

bodies = st.one_of(
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=5000).map(lambda depth: b"[" * depth + b"]" * depth),
)

field_values = st.one_of(
    st.none(), st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
)


def test_purge_bodies_never_get_a_5xx(purge_api: PurgeApi) -> None:
    @fuzz_settings
    @given(bodies, field_values, field_values)
    def one_body(body: bytes, content_type: bytes | None, key: bytes | None) -> None:
        raw = b""
        if content_type is not None:
            raw += b"Content-Type: " + content_type + b"\r\n"
        if key is not None:
            raw += b"Idempotency-Key: " + key + b"\r\n"
        outcome = exchange(purge_api.address, post(body, raw_headers=raw), timeout=15.0)
        assert outcome.status is not None, (body[:200], raw)
        assert outcome.status < 500, (body[:200], raw, outcome.data[:300])

    one_body()
    status = assert_alive_and_serving(
        purge_api.process, purge_api.address, b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n"
    )
    assert status == 200
