"""The GeoDNS responder, bytes in and bytes out: records, rcodes, EDNS, ECS, truncation."""

from __future__ import annotations

import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord, EDNSOption
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.choice import Chooser, Location, Placement, Site
from geo.dns import DnsResponder, ZoneInfo
from geo.routing import Router
from geo.source import TableSource

EU = Placement("eu", 50.1, 8.7)
US = Placement("us", 40.7, -74.0)
AP = Placement("ap", 35.7, 139.7)


def responder(
    extra_sites: list[Site] | None = None, answer_count: int = 1
) -> tuple[DnsResponder, Router]:
    sites = [
        Site("edge-eu", "eu", EU.latitude, EU.longitude, "192.0.2.1"),
        Site("edge-us", "us", US.latitude, US.longitude, "192.0.2.2"),
        Site("edge-ap", "ap", AP.latitude, AP.longitude, "192.0.2.3"),
        Site("edge-eu6", "eu", EU.latitude, EU.longitude, "2001:db8::1"),
        *(extra_sites or []),
    ]
    chooser = Chooser(sites, [EU, US, AP], default_region="us", answer_count=answer_count)
    source = TableSource(
        {
            "10.1.0.0/16": Location(EU.latitude, EU.longitude),
            "10.2.0.0/16": Location(US.latitude, US.longitude),
            "10.3.0.0/16": Location(AP.latitude, AP.longitude),
            "fd00:3::/32": Location(AP.latitude, AP.longitude),
        }
    )
    router = Router(chooser, source)
    zone = ZoneInfo(
        origin="cdn.test",
        services=frozenset({"site", "img"}),
        ttl=30,
        nameserver_addresses=("198.51.100.53",),
        serial=2024010101,
    )
    return DnsResponder(zone, router), router


def query(
    name: str,
    qtype: str = "A",
    *,
    edns: int | None = None,
    ecs: bytes | None = None,
    ident: int = 4242,
) -> bytes:
    record = DNSRecord(DNSHeader(id=ident, rd=1), q=DNSQuestion(name, getattr(QTYPE, qtype)))
    if edns is not None or ecs is not None:
        options = [EDNSOption(8, ecs)] if ecs is not None else []
        record.add_ar(EDNS0(udp_len=edns or 1232, opts=options))
    return bytes(record.pack())


def ecs_option(family: int, source: int, address: bytes, scope: int = 0) -> bytes:
    return struct.pack("!HBB", family, source, scope) + address


def ask(r: DnsResponder, data: bytes, client: str = "10.1.0.9", *, tcp: bool = False) -> DNSRecord:
    wire = r.respond(data, client, tcp=tcp)
    assert wire is not None
    return DNSRecord.parse(wire)


def addresses(answer: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in answer.rr]


def ecs_in(answer: DNSRecord) -> tuple[int, int, int, bytes]:
    (opt,) = [rr for rr in answer.ar if rr.rtype == QTYPE.OPT]
    (option,) = [o for o in opt.rdata if o.code == 8]
    family, source, scope = struct.unpack("!HBB", option.data[:4])
    return family, source, scope, bytes(option.data[4:])


@pytest.mark.parametrize(
    ("client", "address"),
    [("10.1.0.9", "192.0.2.1"), ("10.2.77.1", "192.0.2.2"), ("10.3.1.1", "192.0.2.3")],
)
def test_a_record_is_the_nearest_edge_of_the_resolver(client: str, address: str) -> None:
    r, _ = responder()
    answer = ask(r, query("site.cdn.test"), client)
    assert answer.header.rcode == RCODE.NOERROR
    assert answer.header.aa == 1
    assert answer.header.id == 4242
    assert addresses(answer) == [address]
    assert answer.rr[0].ttl == 30


def test_the_apex_and_mixed_case_names_are_answered() -> None:
    r, _ = responder()
    assert addresses(ask(r, query("cdn.test"), "10.3.0.1")) == ["192.0.2.3"]
    answer = ask(r, query("SiTe.CDN.test"), "10.3.0.1")
    assert addresses(answer) == ["192.0.2.3"]
    assert str(answer.q.qname) == "SiTe.CDN.test."  # the question echoed as asked


def test_aaaa_answers_only_edges_with_ipv6_addresses() -> None:
    r, _ = responder()
    assert addresses(ask(r, query("site.cdn.test", "AAAA"), "10.3.0.1")) == ["2001:db8::1"]


def test_unknown_resolver_goes_to_the_default_region() -> None:
    r, _ = responder()
    assert addresses(ask(r, query("site.cdn.test"), "203.0.113.9")) == ["192.0.2.2"]


def test_ecs_subnet_decides_over_the_resolver_address_and_carries_a_scope() -> None:
    r, _ = responder()
    data = query("site.cdn.test", ecs=ecs_option(1, 24, bytes([10, 3, 7])))
    answer = ask(r, data, "10.1.0.9")  # resolver in eu, client subnet in ap
    assert addresses(answer) == ["192.0.2.3"]
    assert ecs_in(answer) == (1, 24, 24, bytes([10, 3, 7]))


def test_ecs_ipv6_subnet() -> None:
    r, _ = responder()
    data = query("site.cdn.test", ecs=ecs_option(2, 56, bytes.fromhex("fd00000300000a")))
    answer = ask(r, data, "10.1.0.9")
    assert addresses(answer) == ["192.0.2.3"]
    assert ecs_in(answer)[:3] == (2, 56, 56)


def test_ecs_wider_than_the_database_network_gets_the_narrower_scope() -> None:
    r, _ = responder()
    data = query("site.cdn.test", ecs=ecs_option(1, 8, bytes([10])))
    answer = ask(r, data, "10.3.0.9")
    # 10.0.0.0/8 is not in the table, so the default region answers with scope 8.
    assert addresses(answer) == ["192.0.2.2"]
    assert ecs_in(answer)[:3] == (1, 8, 8)
    data = query("site.cdn.test", ecs=ecs_option(1, 12, bytes([10, 0])))
    assert ecs_in(ask(r, data, "10.3.0.9"))[:3] == (1, 12, 12)


def test_ecs_source_prefix_zero_means_use_the_resolver() -> None:
    r, _ = responder()
    answer = ask(r, query("site.cdn.test", ecs=ecs_option(1, 0, b"")), "10.3.0.9")
    assert addresses(answer) == ["192.0.2.3"]
    assert ecs_in(answer)[:3] == (1, 0, 0)


@pytest.mark.parametrize(
    "option",
    [
        ecs_option(3, 24, bytes([10, 3, 7])),  # unknown family
        ecs_option(1, 33, bytes(5)),  # prefix longer than the address
        ecs_option(1, 24, bytes([10, 3])),  # too few address bytes
        ecs_option(1, 16, bytes([10, 3, 7])),  # too many address bytes
        ecs_option(1, 20, bytes([10, 3, 0xFF])),  # bits set beyond the prefix
        b"\x00\x01",  # shorter than the fixed part
    ],
)
def test_malformed_ecs_is_formerr(option: bytes) -> None:
    r, _ = responder()
    answer = ask(r, query("site.cdn.test", ecs=option))
    assert answer.header.rcode == RCODE.FORMERR
    assert answer.rr == []


def test_unknown_names_in_the_zone_are_nxdomain_with_the_soa() -> None:
    r, _ = responder()
    for name in ("nope.cdn.test", "deep.site.cdn.test"):
        answer = ask(r, query(name))
        assert answer.header.rcode == RCODE.NXDOMAIN
        assert answer.header.aa == 1
        assert [rr.rtype for rr in answer.auth] == [QTYPE.SOA]
        assert answer.auth[0].rdata.times[4] == 30  # negative TTL = zone TTL


def test_names_outside_the_zone_are_refused() -> None:
    r, _ = responder()
    for name in ("example.com", "notcdn.test", "test"):
        answer = ask(r, query(name))
        assert answer.header.rcode == RCODE.REFUSED
        assert answer.header.aa == 0
        assert answer.rr == []


def test_soa_and_ns_at_the_apex_with_glue() -> None:
    r, _ = responder()
    soa = ask(r, query("cdn.test", "SOA"))
    assert [rr.rtype for rr in soa.rr] == [QTYPE.SOA]
    assert str(soa.rr[0].rdata.mname) == "ns1.cdn.test."
    assert soa.rr[0].rdata.times[0] == 2024010101
    ns = ask(r, query("cdn.test", "NS"))
    assert [str(rr.rdata) for rr in ns.rr] == ["ns1.cdn.test."]
    assert [(str(rr.rname), str(rr.rdata)) for rr in ns.ar] == [("ns1.cdn.test.", "198.51.100.53")]
    glue = ask(r, query("ns1.cdn.test"))
    assert addresses(glue) == ["198.51.100.53"]


def test_other_types_of_known_names_are_nodata() -> None:
    r, _ = responder()
    answer = ask(r, query("site.cdn.test", "MX"))
    assert answer.header.rcode == RCODE.NOERROR
    assert answer.rr == []
    assert [rr.rtype for rr in answer.auth] == [QTYPE.SOA]


def test_any_answers_both_families() -> None:
    r, _ = responder()
    answer = ask(r, query("site.cdn.test", "ANY"), "10.1.0.1")
    assert sorted(addresses(answer)) == ["192.0.2.1", "2001:db8::1"]


def test_health_change_changes_the_next_answer() -> None:
    r, router = responder()
    data = query("site.cdn.test")
    assert addresses(ask(r, data, "10.1.0.9")) == ["192.0.2.1"]
    assert addresses(ask(r, data, "10.1.0.9")) == ["192.0.2.1"]
    assert r.cache_hits == 1
    router.set_healthy({"edge-us", "edge-ap", "edge-eu6"})
    assert addresses(ask(r, data, "10.1.0.9")) == ["192.0.2.2"]  # New York is next
    router.set_healthy({"edge-eu", "edge-us", "edge-ap", "edge-eu6"})
    assert addresses(ask(r, data, "10.1.0.9")) == ["192.0.2.1"]


def test_the_choice_kept_for_a_24_is_dropped_when_an_edge_goes_down() -> None:
    r, router = responder()

    def ecs_client(last: int) -> list[str]:
        data = query("site.cdn.test", ecs=ecs_option(1, 32, bytes([10, 1, 0, last])))
        return addresses(ask(r, data, "10.3.0.9"))

    # Every query is new to the answer cache, but their /24 is routed once.
    assert [ecs_client(n) for n in (1, 2, 3)] == [["192.0.2.1"]] * 3
    assert (r.cache_hits, router.answer_hits) == (0, 2)
    router.set_healthy({"edge-us", "edge-ap", "edge-eu6"})
    assert ecs_client(4) == ["192.0.2.2"]  # New York is next
    assert ecs_client(1) == ["192.0.2.2"]
    router.set_healthy({"edge-eu", "edge-us", "edge-ap", "edge-eu6"})
    assert ecs_client(5) == ["192.0.2.1"]


def test_each_question_is_echoed_as_asked_whatever_came_before() -> None:
    r, _ = responder()
    asked = [
        ("site.cdn.test", "A", RCODE.NOERROR),
        ("site.cdn.test", "AAAA", RCODE.NOERROR),
        ("SITE.cdn.test", "A", RCODE.NOERROR),
        ("site.cdn.tes", "A", RCODE.REFUSED),
        ("site.cdn.test.x", "A", RCODE.REFUSED),
        ("x.site.cdn.test", "A", RCODE.NXDOMAIN),
        ("img.cdn.test", "A", RCODE.NOERROR),
        ("cdn.test", "SOA", RCODE.NOERROR),
    ]
    for n, (name, qtype, rcode) in enumerate(asked * 2):
        data = query(name, qtype, ecs=ecs_option(1, 32, bytes([10, 1, 1, n])))
        answer = ask(r, data)
        assert (str(answer.q.qname), answer.q.qtype) == (name + ".", getattr(QTYPE, qtype))
        assert answer.header.rcode == rcode


def test_cached_answers_carry_the_id_of_each_query() -> None:
    r, _ = responder()
    first = ask(r, query("site.cdn.test", ident=1))
    second = ask(r, query("site.cdn.test", ident=65535))
    assert (first.header.id, second.header.id) == (1, 65535)
    assert addresses(first) == addresses(second)


def many_edges() -> list[Site]:
    return [
        Site(f"edge6-{i}", "eu", EU.latitude, EU.longitude, f"2001:db8:1::{i + 1:x}")
        for i in range(40)
    ]


def test_answers_too_large_for_udp_are_truncated_and_whole_over_tcp() -> None:
    r, _ = responder(many_edges(), answer_count=40)
    data = query("site.cdn.test", "AAAA")
    udp = ask(r, data)
    assert udp.header.tc == 1
    assert udp.rr == []
    assert len(r.respond(data, "10.1.0.9") or b"") <= 512
    tcp = ask(r, data, tcp=True)
    assert tcp.header.tc == 0
    assert len(tcp.rr) == 40


def test_edns_raises_the_udp_limit_up_to_1232() -> None:
    r, _ = responder(many_edges(), answer_count=40)
    fits = ask(r, query("site.cdn.test", "AAAA", edns=4096))
    assert fits.header.tc == 0 and len(fits.rr) == 40  # about 1,160 bytes
    r, _ = responder(many_edges()[:30], answer_count=30)
    small = ask(r, query("site.cdn.test", "AAAA", edns=600))
    assert small.header.tc == 1
    assert [rr.rtype for rr in small.ar] == [QTYPE.OPT]


def test_edns_version_other_than_zero_is_badvers() -> None:
    r, _ = responder()
    record = DNSRecord.question("site.cdn.test")
    record.add_ar(EDNS0(version=1, udp_len=1232))
    answer = ask(r, bytes(record.pack()))
    (opt,) = answer.ar
    assert (opt.ttl >> 24) << 4 | answer.header.rcode == 16
    assert answer.rr == []


def test_two_opt_records_or_two_questions_are_formerr() -> None:
    r, _ = responder()
    record = DNSRecord.question("site.cdn.test")
    record.add_ar(EDNS0(udp_len=1232))
    record.add_ar(EDNS0(udp_len=1232))
    assert ask(r, bytes(record.pack())).header.rcode == RCODE.FORMERR
    record = DNSRecord.question("site.cdn.test")
    record.add_question(DNSQuestion("img.cdn.test"))
    assert ask(r, bytes(record.pack())).header.rcode == RCODE.FORMERR


def test_other_opcodes_are_notimp() -> None:
    r, _ = responder()
    record = DNSRecord(DNSHeader(id=7, opcode=5), q=DNSQuestion("cdn.test", QTYPE.SOA))  # UPDATE
    answer = ask(r, bytes(record.pack()))
    assert answer.header.rcode == RCODE.NOTIMP
    assert answer.header.opcode == 5


def test_garbage_with_a_header_is_formerr_and_without_one_is_dropped() -> None:
    r, _ = responder()
    assert r.respond(b"", "10.1.0.9") is None
    assert r.respond(b"\x12\x34\x01", "10.1.0.9") is None
    # A header that promises a question, then a label running past the end.
    data = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc"
    answer = ask(r, data)
    assert (answer.header.id, answer.header.rcode, answer.header.qr) == (0x1234, RCODE.FORMERR, 1)


def test_responses_are_never_answered() -> None:
    r, _ = responder()
    response = r.respond(query("site.cdn.test"), "10.1.0.9")
    assert response is not None
    assert r.respond(response, "10.1.0.9") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_readable_answer_or_nothing(data: bytes) -> None:
    r, _ = responder()
    wire = r.respond(data, "10.1.0.9")
    if wire is not None:
        answer = DNSRecord.parse(wire)
        assert answer.header.qr == 1
        assert answer.header.id == struct.unpack("!H", data[:2])[0]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=12, max_value=60), st.data())
def test_a_valid_query_cut_anywhere_never_breaks_the_responder(
    cut: int, data: st.DataObject
) -> None:
    r, _ = responder()
    whole = query("site.cdn.test", ecs=ecs_option(1, 24, bytes([10, 3, 7])))
    piece = whole[: min(cut, len(whole))] + data.draw(st.binary(max_size=8))
    wire = r.respond(piece, "10.1.0.9")
    assert wire is None or DNSRecord.parse(wire).header.id == 4242


def test_a_zone_with_several_name_servers_lists_each_with_its_glue() -> None:
    _, router = responder()
    zone = ZoneInfo(
        origin="cdn.test",
        services=frozenset({"site"}),
        nameservers=(
            ("ns1.cdn.test", ("198.51.100.53",)),
            ("ns2.cdn.test", ("203.0.113.53", "2001:db8::53")),
            ("ns.other-provider.example", ()),
        ),
        serial=1,
    )
    r = DnsResponder(zone, router)
    ns = ask(r, query("cdn.test", "NS"))
    assert [str(rr.rdata) for rr in ns.rr] == [
        "ns1.cdn.test.",
        "ns2.cdn.test.",
        "ns.other-provider.example.",
    ]
    # glue only for the targets inside the zone
    assert sorted((str(rr.rname), str(rr.rdata)) for rr in ns.ar) == [
        ("ns1.cdn.test.", "198.51.100.53"),
        ("ns2.cdn.test.", "2001:db8::53"),
        ("ns2.cdn.test.", "203.0.113.53"),
    ]
    assert addresses(ask(r, query("ns2.cdn.test"))) == ["203.0.113.53"]
    assert addresses(ask(r, query("NS1.cdn.test"))) == ["198.51.100.53"]
    soa = ask(r, query("cdn.test", "SOA"))
    assert str(soa.rr[0].rdata.mname) == "ns1.cdn.test."
