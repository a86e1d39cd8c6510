"""Request smuggling against a real edge: ambiguous framing is refused, never forwarded.

Each head below is one of the classic desync tricks (RFC 9112 §6.1 and §6.3: a message
with both Content-Length and Transfer-Encoding, duplicate or malformed lengths, an
obfuscated Transfer-Encoding, bare LF or obs-fold in the head). The edge must answer
400 (or close), forward nothing the attacker smuggled behind the first request, and
keep serving clean requests afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fleet_runner import HOST, TieredFleet, client_session, get
from tests.support.processes import NodeProcess
from tests.support.raw_client import EchoOrigin, parse_response, raw_exchange

pytestmark = pytest.mark.timeout(60)

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n"

#: (name, head fields after the request line, body) — each an ambiguous framing
ATTACKS = [
    ("cl-and-te", "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    ("te-and-cl", "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", b"0\r\n\r\n"),
    ("two-lengths", "Content-Length: 0\r\nContent-Length: 40\r\n", b""),
    ("length-list", "Content-Length: 0, 40\r\n", b""),
    ("signed-length", "Content-Length: +0\r\n", b""),
    ("te-obfuscated", "Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    ("te-not-last", "Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    ("te-obs-fold", "Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
    ("space-before-colon", "Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
    ("bare-lf", "X-A: 1\nContent-Length: 40\r\n", b""),
    ("bad-chunk-size", "Transfer-Encoding: chunked\r\n", b"zz\r\n\r\n0\r\n\r\n"),
]


@pytest.fixture(scope="module")
def origin() -> Iterator[EchoOrigin]:
    """An origin that records every request it is sent."""
    server = EchoOrigin(routes={"/ok": {"Cache-Control": "max-age=60"}}).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fleet(origin: EchoOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TieredFleet]:
    """One shield and one edge in front of the origin."""
    started: list[NodeProcess] = []
    tiered = TieredFleet(
        tmp_path_factory.mktemp("smuggling"), [origin.url], started, edges=1, shields=1
    )
    try:
        yield tiered.start()
    finally:
        for node in reversed(started):
            node.stop()


@pytest.mark.parametrize(("name", "fields", "body"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_ambiguous_framing_is_refused_and_nothing_is_smuggled(
    fleet: TieredFleet, origin: EchoOrigin, name: str, fields: str, body: bytes
) -> None:
    address = fleet.config("edge1").listen
    head = f"POST /ok?attack={name} HTTP/1.1\r\nHost: {HOST}\r\n{fields}\r\n".encode()
    answer = await raw_exchange(address, head + body + SMUGGLED)
    if answer:
        response = parse_response(answer)
        assert response.status == 400, answer[:300]
        assert b"/smuggled" not in answer
    assert origin.counts["/smuggled"] == 0
    assert not [seen for seen in origin.seen if f"attack={name}" in seen.target]
    async with client_session() as session:
        reply = await get(session, fleet.url("edge1"), "/ok")
    assert reply.status == 200
