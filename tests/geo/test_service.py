"""`edgeshield geo serve` as a real process: DNS over UDP and TCP, ECS, the route API."""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiodns
import aiodns.error
import pycares
import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord, EDNSOption

from fleet.config import load_fleet, split_host_port
from geo.choice import Location
from geo.mmdb_build import write_mmdb
from tests.support.ports import free_port
from tests.support.processes import NodeProcess

REGIONS = [
    ("eu", 50.1, 8.7, "10.1.0.0/16"),
    ("us", 40.7, -74.0, "10.2.0.0/16"),
    ("ap", 35.7, 139.7, "10.3.0.0/16"),
]
PUBLIC = {"eu": "127.0.1.1", "us": "127.0.1.2", "ap": "127.0.1.3"}


def fleet_text(root: Path, *, mmdb: str = "", edge_admin: dict[str, int] | None = None) -> str:
    """Three regions, one edge in each with its own public address, and [geo]."""
    lines: list[str] = []
    for name, lat, lon, net in REGIONS:
        lines += [
            "[[regions]]",
            f'name = "{name}"',
            f"latitude = {lat}",
            f"longitude = {lon}",
            f'client_networks = ["{net}"]',
            "",
        ]
    lines += [
        "[[services]]",
        'name = "site"',
        'hosts = ["www.example.com"]',
        'origins = ["http://127.0.0.1:9"]',
        "",
    ]
    for name, *_ in REGIONS:
        admin = (edge_admin or {}).get(name) or free_port()
        lines += [
            "[[edges]]",
            f'name = "edge-{name}"',
            f'region = "{name}"',
            f'listen = "127.0.0.1:{free_port()}"',
            f'admin_listen = "127.0.0.1:{admin}"',
            f'cache_dir = "{root / name}"',
            'cache_size = "16MiB"',
            f'public_address = "{PUBLIC[name]}"',
            "",
        ]
    lines += [
        "[geo]",
        f'dns_listen = "127.0.0.1:{free_port()}"',
        f'http_listen = "127.0.0.1:{free_port()}"',
        'zone = "cdn.test"',
        'default_region = "us"',
        "health_interval = 0.5",
        f'mmdb = "{mmdb}"',
        # The resolver address 127.0.0.3 stands for a network the operator pins to ap.
        'coverage_zones = [{ network = "127.0.0.3/32", region = "ap" }]',
        "",
    ]
    return "\n".join(lines)


@pytest.fixture
def geo_fleet(tmp_path: Path, processes: list[NodeProcess]) -> Iterator[tuple[Path, NodeProcess]]:
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_text(tmp_path), encoding="utf-8")
    fleet = load_fleet(path)
    assert fleet.geo is not None
    node = NodeProcess(["geo", "serve", "--config", str(path)], tmp_path / "geo.log").start()
    processes.append(node)
    node.wait_listening(fleet.geo.http_listen)
    yield path, node


def dns_port(path: Path) -> int:
    fleet = load_fleet(path)
    assert fleet.geo is not None
    return split_host_port(fleet.geo.dns_listen)[1]


def http_get(path: Path, target: str) -> tuple[int, dict[str, object]]:
    fleet = load_fleet(path)
    assert fleet.geo is not None
    url = f"http://{fleet.geo.http_listen}{target}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def resolve(port: int, name: str, qtype: str = "A", **options: object) -> list[str]:
    resolver = aiodns.DNSResolver(
        nameservers=[f"127.0.0.1:{port}"], timeout=2.0, tries=2, **options
    )
    try:
        result = await resolver.query_dns(name, qtype)
        return [record.data.addr for record in result.answer]
    finally:
        await resolver.close()


def raw_udp(port: int, data: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def ecs_query(name: str, subnet: bytes, prefix: int) -> bytes:
    record = DNSRecord.question(name)
    option = EDNSOption(8, struct.pack("!HBB", 1, prefix, 0) + subnet)
    record.add_ar(EDNS0(udp_len=1232, opts=[option]))
    return bytes(record.pack())


async def test_udp_and_tcp_answers_follow_the_resolver_address(
    geo_fleet: tuple[Path, NodeProcess],
) -> None:
    path, _ = geo_fleet
    port = dns_port(path)
    # 127.0.0.1 is in no client network: the default region (us) answers.
    assert await resolve(port, "site.cdn.test") == [PUBLIC["us"]]
    assert await resolve(port, "cdn.test", flags=pycares.ARES_FLAG_USEVC) == [PUBLIC["us"]]
    # A resolver at 127.0.0.3 is in a coverage zone of ap.
    assert await resolve(port, "site.cdn.test", local_ip="127.0.0.3") == [PUBLIC["ap"]]
    tcp = await resolve(port, "site.cdn.test", local_ip="127.0.0.3", flags=pycares.ARES_FLAG_USEVC)
    assert tcp == [PUBLIC["ap"]]


async def test_unknown_names_are_nxdomain(geo_fleet: tuple[Path, NodeProcess]) -> None:
    path, _ = geo_fleet
    port = dns_port(path)
    for options in ({}, {"flags": pycares.ARES_FLAG_USEVC}):
        with pytest.raises(aiodns.error.DNSError) as caught:
            await resolve(port, "nothing.cdn.test", **options)
        assert caught.value.args[0] == aiodns.error.ARES_ENOTFOUND


def test_each_region_subnet_gets_its_edge_over_ecs(geo_fleet: tuple[Path, NodeProcess]) -> None:
    path, _ = geo_fleet
    port = dns_port(path)
    for name, _lat, _lon, net in REGIONS:
        first_octets = bytes(int(x) for x in net.split("/")[0].split(".")[:2]) + b"\x07"
        wire = raw_udp(port, ecs_query("site.cdn.test", first_octets, 24))
        assert wire is not None
        answer = DNSRecord.parse(wire)
        assert [str(rr.rdata) for rr in answer.rr] == [PUBLIC[name]], name
        (opt,) = [rr for rr in answer.ar if rr.rtype == QTYPE.OPT]
        assert opt.rdata[0].data[:4] == struct.pack("!HBB", 1, 24, 24)


def test_malformed_packets_get_formerr_or_nothing_and_the_server_lives_on(
    geo_fleet: tuple[Path, NodeProcess],
) -> None:
    path, node = geo_fleet
    port = dns_port(path)
    assert raw_udp(port, b"\x01") is None
    formerr = raw_udp(port, b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fxyz")
    assert formerr is not None
    header = DNSRecord.parse(formerr).header
    assert (header.id, header.rcode) == (0xABCD, RCODE.FORMERR)
    for junk in (b"\xff" * 12, b"\x00" * 512, bytes(range(256)), b"\x00\x00\x01\x00\x00\x01"):
        raw_udp(port, junk)
    # Garbage over TCP: a short frame, then a connection closed mid-frame.
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"\x00\x05hello")
        assert sock.recv(2) == b""  # unreadable: the server hangs up
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"\x01\x00abc")
    wire = raw_udp(port, ecs_query("site.cdn.test", bytes([10, 1, 0]), 24))
    assert wire is not None
    assert [str(rr.rdata) for rr in DNSRecord.parse(wire).rr] == [PUBLIC["eu"]]
    assert node.proc is not None and node.proc.poll() is None


def test_tcp_carries_several_queries_on_one_connection(
    geo_fleet: tuple[Path, NodeProcess],
) -> None:
    path, _ = geo_fleet
    port = dns_port(path)
    queries = [
        ecs_query("site.cdn.test", bytes([10, 3, 0]), 24),
        ecs_query("site.cdn.test", bytes([10, 1, 0]), 24),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(q)) + q for q in queries))
        reader = sock.makefile("rb")
        answers = []
        for _ in queries:
            (length,) = struct.unpack("!H", reader.read(2))
            answers.append(DNSRecord.parse(reader.read(length)))
    assert [str(a.rr[0].rdata) for a in answers] == [PUBLIC["ap"], PUBLIC["eu"]]


def test_route_endpoint_explains_the_choice(geo_fleet: tuple[Path, NodeProcess]) -> None:
    path, _ = geo_fleet
    status, body = http_get(path, "/v1/route?ip=10.3.9.9")
    assert status == 200
    assert body["edge"] == "edge-ap"
    assert body["basis"] == "geoip"
    assert body["edges"] == [
        {"name": "edge-ap", "region": "ap", "address": PUBLIC["ap"], "distance_km": 0.0}
    ]
    assert "10.3.9.9" in str(body["reason"])
    status, body = http_get(path, "/v1/route?ip=2001:db8::1")
    assert (status, body["basis"], body["edge"]) == (200, "default-region", "edge-us")
    status, body = http_get(path, "/v1/route?ip=not-an-ip")
    assert status == 400 and "not an IP address" in str(body["error"])
    status, body = http_get(path, "/v1/route")
    assert status == 400


def test_database_is_reloaded_when_replaced(tmp_path: Path, processes: list[NodeProcess]) -> None:
    mmdb = tmp_path / "geo.mmdb"
    write_mmdb([("10.9.0.0/16", Location(50.1, 8.7))], mmdb)
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_text(tmp_path, mmdb=str(mmdb)), encoding="utf-8")
    fleet = load_fleet(path)
    assert fleet.geo is not None
    node = NodeProcess(["geo", "serve", "--config", str(path)], tmp_path / "geo.log").start()
    processes.append(node)
    node.wait_listening(fleet.geo.http_listen)
    port = dns_port(path)
    query = ecs_query("site.cdn.test", bytes([10, 9, 0]), 24)

    def answer() -> str:
        wire = raw_udp(port, query)
        assert wire is not None
        return str(DNSRecord.parse(wire).rr[0].rdata)

    assert answer() == PUBLIC["eu"]
    write_mmdb([("10.9.0.0/16", Location(35.7, 139.7))], mmdb)
    deadline = time.monotonic() + 10
    while answer() != PUBLIC["ap"]:
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.1)
    status, body = http_get(path, "/v1/route?ip=10.9.1.1")
    assert (status, body["edge"]) == (200, "edge-ap")


def test_build_mmdb_and_lookup_commands(tmp_path: Path, processes: list[NodeProcess]) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_text(tmp_path), encoding="utf-8")
    out = tmp_path / "out" / "fleet.mmdb"
    build = NodeProcess(
        ["geo", "build-mmdb", "--config", str(path), "-o", str(out)], tmp_path / "build.log"
    ).start()
    processes.append(build)
    assert build.proc is not None and build.proc.wait(30) == 0
    assert "3 networks in 3 regions" in build.log()
    assert out.stat().st_size > 0
    lookup = NodeProcess(
        ["geo", "lookup", "10.3.4.5", "--config", str(path)], tmp_path / "lookup.log"
    ).start()
    processes.append(lookup)
    assert lookup.proc is not None and lookup.proc.wait(30) == 0
    text = lookup.log()
    assert "location:  ap (35.70, 139.70)" in text
    assert "edge:      edge-ap (127.0.1.3, region ap, 0 km)" in text
    assert "why:" in text


def test_a_head_the_parser_refuses_gets_a_short_answer(geo_fleet: tuple[Path, NodeProcess]) -> None:
    path, _ = geo_fleet
    fleet = load_fleet(path)
    assert fleet.geo is not None
    host, port = split_host_port(fleet.geo.http_listen)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /v1/route HTTP/1.1\r\nHost: g\r\nX: " + b"A" * 9000 + b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", answer[:300]
    assert len(body) < 100 and b"AAA" not in body, body[:200]
