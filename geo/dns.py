"""The authoritative GeoDNS responder: a query's bytes in, the answer's bytes out.

No sockets here: the server moves the bytes (UDP datagrams, TCP frames) and this
module decides what to say, with dnslib doing the wire format. It answers for one
zone: A/AAAA for the apex and for `<service>.<zone>` with the nearest healthy edges,
SOA and NS at the apex, NXDOMAIN for other names in the zone and REFUSED outside it.
EDNS(0) (RFC 6891) sets the UDP size; EDNS Client Subnet (RFC 7871) decides the
client when present. Anything malformed is answered FORMERR when its header can be
read and dropped otherwise; nothing a client sends may raise out of `respond`.

Answers are cached by the query's bytes (all but the ID) and the resolver's address,
and the cache is emptied whenever the router's version moves (health or database
changed), so a hot query is one dict lookup.

A query not seen before (every ECS client subnet is a new one) is parsed and packed by
dnslib every time, but what goes between is reused: the edges come from
`Router.answer` (cached per client /24 or /56), the answer records for a name and a
set of edges, the SOA, NS and glue records and the OPT record are built once, and the
name asked for is classified once per spelling.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import struct
import time
from dataclasses import dataclass

from dnslib import (
    AAAA,
    CLASS,
    EDNS0,
    NS,
    OPCODE,
    QTYPE,
    RCODE,
    RR,
    SOA,
    A,
    DNSBuffer,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
    EDNSOption,
)

from geo.choice import IPNetwork
from geo.routing import Answer, Router

__all__ = ["EDNS_UDP_SIZE", "DnsResponder", "QueryError", "ZoneInfo", "parse_client_subnet"]

log = logging.getLogger("edgeshield.geo.dns")

# What we accept and send over UDP with EDNS: 1232 bytes, the DNS Flag Day 2020
# value, avoids IP fragmentation on any path with an MTU of 1280 or more.
EDNS_UDP_SIZE = 1232
# RFC 1035 section 4.2.1: without EDNS, UDP messages are limited to 512 bytes.
PLAIN_UDP_SIZE = 512
TCP_SIZE = 65535
OPTION_CLIENT_SUBNET = 8
BADVERS = 16
CLASS_ANY = 255  # QCLASS "*" (RFC 1035 section 3.2.5)
CACHE_ENTRIES = 50_000
# Names (as spelled in queries), question sections and answer record sets remembered
# before starting over.
NAME_ENTRIES = 4096
RECORD_ENTRIES = 4096
# How many lengths of question section are looked for among those remembered.
QUESTION_LENGTHS = 8

# dnslib's QTYPE/CLASS/OPCODE/RCODE attributes are dictionary look-ups behind a
# Python __getattr__; the request path reads plain ints instead.
_A: int = QTYPE.A
_AAAA: int = QTYPE.AAAA
_ANY: int = QTYPE.ANY
_NS: int = QTYPE.NS
_SOA: int = QTYPE.SOA
_OPT: int = QTYPE.OPT
_IN: int = CLASS.IN
_QUERY: int = OPCODE.QUERY
_NOERROR: int = RCODE.NOERROR
_FORMERR: int = RCODE.FORMERR
_NXDOMAIN: int = RCODE.NXDOMAIN
_REFUSED: int = RCODE.REFUSED


class NameKind(enum.Enum):
    """What a name asked for is to this zone."""

    OUTSIDE = "outside"  # not in the zone: REFUSED
    APEX = "apex"  # the zone itself
    SERVICE = "service"  # <service>.<zone>
    NAMESERVER = "nameserver"  # the NS target, when it is in the zone
    UNKNOWN = "unknown"  # in the zone but no such name: NXDOMAIN


class QueryError(Exception):
    """A query that parsed but breaks a rule: answered with `rcode`."""

    def __init__(self, rcode: int, message: str) -> None:
        super().__init__(message)
        self.rcode = rcode


@dataclass(frozen=True)
class ZoneInfo:
    """What the responder is authoritative for."""

    origin: str
    services: frozenset[str]
    ttl: int = 30
    nameserver: str = ""
    nameserver_addresses: tuple[str, ...] = ()
    serial: int = 0
    #: the zone's NS set: (name, glue addresses) each; empty means one NS,
    #: `nameserver_name` with `nameserver_addresses`
    nameservers: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def nameserver_name(self) -> str:
        """The first NS target: the first of `nameservers`, `nameserver`, or ns1.<zone>."""
        if self.nameservers:
            return self.nameservers[0][0]
        return self.nameserver or f"ns1.{self.origin}"

    @property
    def ns_set(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Every NS target with its glue addresses."""
        if self.nameservers:
            return self.nameservers
        return ((self.nameserver_name, self.nameserver_addresses),)


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """An EDNS Client Subnet option from a query (RFC 7871 section 6)."""

    family: int
    source_prefix: int
    address: bytes
    value: int  # the address as a number, all `width` bits of it

    @property
    def version(self) -> int:
        """4 or 6: the IP version of the subnet."""
        return 4 if self.family == 1 else 6

    @property
    def network(self) -> IPNetwork:
        """The subnet as an ip_network."""
        if self.family == 1:
            return ipaddress.IPv4Network((self.value, self.source_prefix))
        return ipaddress.IPv6Network((self.value, self.source_prefix))


def parse_client_subnet(data: bytes) -> ClientSubnet:
    """The ECS option in `data`; QueryError(FORMERR) when it breaks RFC 7871 section 6."""
    if len(data) < 4:
        raise QueryError(RCODE.FORMERR, "ECS option shorter than 4 bytes")
    family, source, _scope = struct.unpack("!HBB", data[:4])
    address = data[4:]
    if family == 1:
        width = 32
    elif family == 2:
        width = 128
    else:
        raise QueryError(RCODE.FORMERR, f"ECS family {family} is not IPv4 or IPv6")
    if source > width:
        raise QueryError(RCODE.FORMERR, f"ECS source prefix {source} is longer than {width}")
    # "A server receiving an ECS option that uses either too few or too many ADDRESS
    # octets, or that has non-zero ADDRESS bits set beyond SOURCE PREFIX-LENGTH,
    # SHOULD return FORMERR to reject the packet" (RFC 7871 section 6).
    if len(address) != (source + 7) // 8:
        raise QueryError(RCODE.FORMERR, "ECS address length does not match its prefix")
    full = int.from_bytes(address.ljust(width // 8, b"\0"), "big")
    if full & ((1 << (width - source)) - 1):
        raise QueryError(RCODE.FORMERR, "ECS address has bits set beyond its prefix")
    return ClientSubnet(family, source, address, full)


class DnsResponder:
    """Answers DNS queries for one zone from a Router."""

    def __init__(self, zone: ZoneInfo, router: Router) -> None:
        self.zone = zone
        self.router = router
        self.origin = DNSLabel(zone.origin)
        self.serial = zone.serial or int(time.time())
        #: query bytes after the id -> the response after the id, and its labels
        self._cache: dict[tuple[bytes, str, bool], tuple[bytes, AnswerLabels]] = {}
        self._cache_version = router.version
        # Built once: the zone does not change while we serve it.
        self._soa_record = self._soa()
        self._ns_records = self._ns()
        self._glue_records = self._glue()
        self._ns_names = frozenset(name.lower().rstrip(".") for name, _ in zone.ns_set)
        self._opt_record = EDNS0(udp_len=EDNS_UDP_SIZE)
        # The OPT record of an answer with ECS: its options are set for each answer
        # just before packing, so it is one object, not one per answer. This is safe
        # because `respond` is synchronous and keeps no reply after it returns.
        self._ecs_opt_record = EDNS0(udp_len=EDNS_UDP_SIZE)
        self._questions: dict[bytes, DNSQuestion] = {}
        self._question_lengths: list[int] = []
        self._names: dict[tuple[bytes, ...], NameKind] = {}
        self._records: dict[tuple[tuple[bytes, ...], int, tuple[str, ...]], list[RR]] = {}
        self._resolvers: dict[str, tuple[int, int, int]] = {}
        self.queries = 0
        self.cache_hits = 0
        self.malformed = 0
        #: answers by (query type, rcode, region of the first edge answered) for metrics
        self.answers: dict[AnswerLabels, int] = {}
        self._answered_region = ""

    def respond(self, data: bytes, client: str, *, tcp: bool = False) -> bytes | None:
        """The response to the query `data` from `client` (an IP address), or None to
        send nothing. Never raises for anything in `data`."""
        self.queries += 1
        if self._cache_version != self.router.version:
            self._cache.clear()
            self._cache_version = self.router.version
        key = (data[2:], client, tcp)
        cached = self._cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            tail, labels = cached
            self.answers[labels] = self.answers.get(labels, 0) + 1
            return data[:2] + tail
        self._answered_region = ""
        try:
            response = self._respond(data, client, tcp)
        except Exception:
            # A bug of ours must cost one answer, never the server.
            log.exception("internal error answering a query from %s", client)
            response = _header_only(data, RCODE.SERVFAIL)
        labels = _labels(data, response, self._answered_region)
        self.answers[labels] = self.answers.get(labels, 0) + 1
        if response is not None and len(data) >= 12:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = (response[2:], labels)
        return response

    def _respond(self, data: bytes, client: str, tcp: bool) -> bytes | None:
        if len(data) < 12:
            self.malformed += 1
            return None  # not even a header: nothing to answer to
        flags = struct.unpack("!H", data[2:4])[0]
        if flags & 0x8000:
            return None  # a response, not a query: never answer those (no loops)
        try:
            query = self._parse(data)
        except Exception:  # dnslib raises DNSError, struct.error, UnicodeError, ...
            self.malformed += 1
            return _header_only(data, RCODE.FORMERR)
        opt = [rr for rr in query.ar if rr.rtype == _OPT]
        try:
            return self._answer(query, opt, client, tcp)
        except QueryError as exc:
            self.malformed += 1
            reply = _reply(query, exc.rcode, aa=False)
            if opt and len(opt) == 1:
                reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
            return bytes(reply.pack())

    def _parse(self, data: bytes) -> DNSRecord:
        """`DNSRecord.parse(data)`, with the question section parsed once per spelling.

        A query is a header, one question and (with EDNS) one OPT record. The
        question is the same from query to query while the OPT record carries each
        client's subnet, so a question parsed before is taken from memory when the
        bytes after the header start with it. Anything else goes to dnslib whole.
        """
        buffer = DNSBuffer(data)
        header = DNSHeader.parse(buffer)
        if header.q != 1 or header.a or header.auth:
            return DNSRecord.parse(data)
        start = buffer.offset
        question: DNSQuestion | None = None
        for length in self._question_lengths:
            question = self._questions.get(data[start : start + length])
            if question is not None:
                buffer.offset = start + length
                break
        else:
            question = DNSQuestion.parse(buffer)
            self._remember_question(question, data[start : buffer.offset])
        additional = [RR.parse(buffer) for _ in range(header.ar)]
        return DNSRecord(header, [question], ar=additional)

    def _remember_question(self, question: DNSQuestion, wire: bytes) -> None:
        # Only a name without compression pointers is remembered: a pointer reaches
        # outside these bytes (into the header), so the same bytes could parse to
        # another name. Without one, the same bytes always parse to the same question.
        plain = sum(len(label) + 1 for label in question.qname.label) + 1 + 4
        if len(wire) != plain:
            return
        if len(self._questions) >= NAME_ENTRIES:
            self._questions.clear()
            self._question_lengths.clear()
        if len(wire) not in self._question_lengths:
            if len(self._question_lengths) >= QUESTION_LENGTHS:
                return
            self._question_lengths.append(len(wire))
        self._questions[wire] = question

    def _answer(self, query: DNSRecord, opt: list[RR], client: str, tcp: bool) -> bytes:
        if query.header.opcode != _QUERY:
            # RFC 1035 section 4.1.1: NOTIMP for a kind of query we do not support.
            raise QueryError(RCODE.NOTIMP, "opcode not supported")
        if len(query.questions) != 1:
            raise QueryError(_FORMERR, "a query must ask exactly one question")
        if len(opt) > 1:
            # RFC 6891 section 6.1.1: more than one OPT RR is FORMERR.
            raise QueryError(_FORMERR, "more than one OPT record")
        subnet: ClientSubnet | None = None
        limit = TCP_SIZE if tcp else PLAIN_UDP_SIZE
        if opt:
            version = (opt[0].ttl >> 16) & 0xFF
            if version != 0:
                # RFC 6891 section 6.1.3: a version we do not implement gets BADVERS.
                reply = _reply(query, 0, aa=False)
                reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE, ext_rcode=BADVERS >> 4))
                return bytes(reply.pack())
            if not tcp:
                # RFC 6891 section 6.2.5: values below 512 are treated as 512.
                limit = max(PLAIN_UDP_SIZE, min(opt[0].rclass, EDNS_UDP_SIZE))
            for option in opt[0].rdata or ():
                if option.code == OPTION_CLIENT_SUBNET:
                    subnet = parse_client_subnet(bytes(option.data))
        question = query.q
        qtype = question.qtype
        kind = self._classify(question.qname)
        if kind is NameKind.OUTSIDE or question.qclass not in (_IN, CLASS_ANY):
            reply = _reply(query, _REFUSED, aa=False)
            return self._finish(reply, opt, subnet, 0, limit)

        reply = _reply(query, _NOERROR, aa=True)
        scope = 0
        if kind is NameKind.APEX or kind is NameKind.SERVICE:
            if kind is NameKind.APEX and qtype == _SOA:
                reply.rr = [self._soa_record]
            elif kind is NameKind.APEX and qtype == _NS:
                reply.rr = list(self._ns_records)
                reply.ar = list(self._glue_records)
            elif qtype in (_A, _AAAA, _ANY):
                scope = self._add_edges(reply, question.qname, qtype, subnet, client)
            if not reply.rr:
                reply.auth = [self._soa_record]  # NODATA (RFC 2308 section 2.2)
        elif kind is NameKind.NAMESERVER:
            reply.rr = [
                r
                for r in self._glue_records
                if qtype in (r.rtype, _ANY) and r.rname == question.qname
            ]
            if not reply.rr:
                reply.auth = [self._soa_record]
        else:
            # RFC 2308 section 3: NXDOMAIN with the SOA in the authority section.
            reply.header.rcode = _NXDOMAIN
            reply.auth = [self._soa_record]
        return self._finish(reply, opt, subnet, scope, limit)

    def _classify(self, qname: DNSLabel) -> NameKind:
        """What `qname` is to the zone, worked out once per spelling of it."""
        kind = self._names.get(qname.label)
        if kind is not None:
            return kind
        name = str(qname).lower().rstrip(".")
        origin = self.zone.origin
        if name != origin and not name.endswith("." + origin):
            kind = NameKind.OUTSIDE
        elif name == origin:
            kind = NameKind.APEX
        elif name[: -len(origin) - 1] in self.zone.services:
            kind = NameKind.SERVICE
        elif name in self._ns_names:
            kind = NameKind.NAMESERVER
        else:
            kind = NameKind.UNKNOWN
        if len(self._names) >= NAME_ENTRIES:
            self._names.clear()
        self._names[qname.label] = kind
        return kind

    def _add_edges(
        self,
        reply: DNSRecord,
        qname: DNSLabel,
        qtype: int,
        subnet: ClientSubnet | None,
        client: str,
    ) -> int:
        """Answer records for the nearest edges; returns the ECS scope prefix."""
        if subnet is not None and subnet.source_prefix > 0:
            version, value, prefixlen = subnet.version, subnet.value, subnet.source_prefix
        else:
            # No ECS, or "source prefix 0": the client asked that its address not be
            # used (RFC 7871 section 7.1.2), so the resolver's address decides.
            version, value, prefixlen = self._resolver(client)
        families = (4, 6) if qtype == _ANY else (4 if qtype == _A else 6,)
        answer: Answer | None = None
        for family in families:
            answer = self.router.answer(version, value, prefixlen, family)
            reply.rr.extend(self._edge_records(qname, family, answer.addresses))
            if answer.region and not self._answered_region:
                self._answered_region = answer.region
        if subnet is None or subnet.source_prefix == 0 or answer is None:
            return 0
        # RFC 7871 section 7.2.1: SCOPE is the prefix length the answer holds for. It
        # holds for the subnet we were given unless the database (or coverage zone)
        # network that decided is narrower; a scope longer than the source is allowed
        # and tells the resolver the source was not specific enough.
        scope = subnet.source_prefix
        if answer.deciding_prefix is not None:
            scope = max(scope, answer.deciding_prefix)
        return scope

    def _edge_records(self, qname: DNSLabel, family: int, addresses: tuple[str, ...]) -> list[RR]:
        """The A or AAAA records for `addresses` under `qname` (spelled as asked,
        which also lets the name compress to a pointer at the question)."""
        key = (qname.label, family, addresses)
        records = self._records.get(key)
        if records is None:
            if family == 4:
                records = [RR(qname, _A, rdata=A(a), ttl=self.zone.ttl) for a in addresses]
            else:
                records = [RR(qname, _AAAA, rdata=AAAA(a), ttl=self.zone.ttl) for a in addresses]
            if len(self._records) >= RECORD_ENTRIES:
                self._records.clear()
            self._records[key] = records
        return records

    def _resolver(self, client: str) -> tuple[int, int, int]:
        """The resolver's address as (IP version, number, full prefix length);
        resolvers are few, so each is worked out once."""
        found = self._resolvers.get(client)
        if found is None:
            address = ipaddress.ip_address(client)
            found = (address.version, int(address), address.max_prefixlen)
            if len(self._resolvers) >= NAME_ENTRIES:
                self._resolvers.clear()
            self._resolvers[client] = found
        return found

    def _finish(
        self,
        reply: DNSRecord,
        opt: list[RR],
        subnet: ClientSubnet | None,
        scope: int,
        limit: int,
    ) -> bytes:
        if opt:
            record = self._opt_record
            if subnet is not None:
                # RFC 7871 section 7.2.1: FAMILY, SOURCE PREFIX-LENGTH and ADDRESS are
                # copied from the query; SCOPE PREFIX-LENGTH is ours.
                data = struct.pack("!HBB", subnet.family, subnet.source_prefix, scope)
                record = self._ecs_opt_record
                record.rdata = [EDNSOption(OPTION_CLIENT_SUBNET, data + subnet.address)]
            reply.ar.append(record)
        wire = bytes(reply.pack())
        if len(wire) <= limit:
            return wire
        # RFC 2181 section 9 / RFC 1035 section 4.2.1: too large for UDP, so set TC
        # and let the resolver ask again over TCP. The question and OPT stay.
        truncated = DNSRecord(
            DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1), q=reply.q
        )
        for record in reply.ar:
            if record.rtype == _OPT:
                truncated.add_ar(record)
        return bytes(truncated.pack())

    def _soa(self) -> RR:
        zone = self.zone
        # RFC 2308 section 5: the negative-caching TTL is min(SOA TTL, MINIMUM), so
        # both are the zone TTL: an NXDOMAIN is remembered no longer than an answer.
        return RR(
            self.origin,
            QTYPE.SOA,
            ttl=zone.ttl,
            rdata=SOA(
                zone.nameserver_name,
                f"hostmaster.{zone.origin}",
                (self.serial, 3600, 600, 86400, zone.ttl),
            ),
        )

    def _ns(self) -> list[RR]:
        return [RR(self.origin, QTYPE.NS, ttl=3600, rdata=NS(name)) for name, _ in self.zone.ns_set]

    def _glue(self) -> list[RR]:
        """A/AAAA records for the NS targets inside the zone (RFC 1034 4.2.1 glue)."""
        records = []
        origin = self.zone.origin
        for name, addresses in self.zone.ns_set:
            lowered = name.lower().rstrip(".")
            if lowered != origin and not lowered.endswith("." + origin):
                continue  # out of zone: not ours to answer
            for address in addresses:
                if ":" in address:
                    records.append(RR(name, QTYPE.AAAA, ttl=3600, rdata=AAAA(address)))
                else:
                    records.append(RR(name, QTYPE.A, ttl=3600, rdata=A(address)))
        return records


def _reply(query: DNSRecord, rcode: int, *, aa: bool) -> DNSRecord:
    """The parsed query turned into its response, in place (cheaper than a new one).

    RFC 1035 section 4.1.1: QR set, OPCODE and RD copied; CD copied too (RFC 4035
    section 3.2.2); AA when we answer authoritatively; TC, RA, Z and AD clear. The
    question stays; every other section starts empty.
    """
    copied = query.header.bitmap & 0x7910  # OPCODE (bits 11-14), RD (8), CD (4)
    query.header.bitmap = copied | 0x8000 | (0x0400 if aa else 0) | (rcode & 0xF)
    query.rr, query.auth, query.ar = [], [], []
    return query


def _header_only(data: bytes, rcode: int) -> bytes | None:
    """A bare response (no sections) to a query whose body cannot be read."""
    if len(data) < 12:
        return None
    ident, flags = struct.unpack("!HH", data[:4])
    opcode = (flags >> 11) & 0xF
    rd = (flags >> 8) & 0x1
    header = DNSHeader(id=ident, qr=1, opcode=opcode, rd=rd, rcode=rcode)
    return bytes(DNSRecord(header).pack())


#: (query type, rcode, region answered) of one answer, for the metrics
AnswerLabels = tuple[str, str, str]


def _labels(query: bytes, response: bytes | None, region: str) -> AnswerLabels:
    """The metric labels of an answer, read from the wire: the question's type (a
    name without compression, as queries carry it), the response's rcode."""
    if response is None or len(response) < 4:
        return ("-", "none", "")
    rcode = response[3] & 0x0F
    rcode_name = _RCODE_NAMES.get(rcode, str(rcode))
    offset = 12
    while offset < len(query) and query[offset] and query[offset] < 0xC0:
        offset += query[offset] + 1
    qtype = "-"
    if offset + 3 <= len(query) and query[offset] == 0:
        code = int.from_bytes(query[offset + 1 : offset + 3], "big")
        qtype = _QTYPE_NAMES.get(code, "other")
    return (qtype, rcode_name, region)


_RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_QTYPE_NAMES = {1: "A", 2: "NS", 6: "SOA", 28: "AAAA", 255: "ANY"}
