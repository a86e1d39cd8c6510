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
"""

from __future__ import annotations

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
    DNSHeader,
    DNSLabel,
    DNSRecord,
    EDNSOption,
)

from geo.choice import Choice, IPNetwork
from geo.routing import Router

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

    @property
    def nameserver_name(self) -> str:
        """The NS target: `nameserver`, or ns1.<zone>."""
        return self.nameserver or f"ns1.{self.origin}"


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """An EDNS Client Subnet option from a query (RFC 7871 section 6)."""

    family: int
    source_prefix: int
    address: bytes
    network: IPNetwork


def parse_client_subnet(data: bytes) -> ClientSubnet:
    """The ECS option in `data`; QueryError(FORMERR) when it breaks RFC 7871 section 6."""
    if len(data) < 4:
        raise QueryError(RCODE.FORMERR, "ECS option shorter than 4 bytes")
    family, source, _scope = struct.unpack("!HBB", data[:4])
    address = data[4:]
    if family == 1:
        width, kind = 32, 4
    elif family == 2:
        width, kind = 128, 6
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
    network: IPNetwork
    if kind == 4:
        network = ipaddress.IPv4Network((full, source))
    else:
        network = ipaddress.IPv6Network((full, source))
    return ClientSubnet(family, source, address, network)


class DnsResponder:
    """Answers DNS queries for one zone from a Router."""

    def __init__(self, zone: ZoneInfo, router: Router) -> None:
        self.zone = zone
        self.router = router
        self.origin = DNSLabel(zone.origin)
        self.serial = zone.serial or int(time.time())
        self._cache: dict[tuple[bytes, str, bool], bytes] = {}
        self._cache_version = router.version
        self.queries = 0
        self.cache_hits = 0
        self.malformed = 0

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
            return data[:2] + cached
        try:
            response = self._respond(data, client, tcp)
        except Exception:
            # A bug of ours must cost one answer, never the server.
            log.exception("internal error answering a query from %s", client)
            response = _header_only(data, RCODE.SERVFAIL)
        if response is not None and len(data) >= 12:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = response[2:]
        return response

    def _respond(self, data: bytes, client: str, tcp: bool) -> bytes | None:
        if len(data) < 12:
            self.malformed += 1
            return None  # not even a header: nothing to answer to
        flags = struct.unpack("!H", data[2:4])[0]
        if flags & 0x8000:
            return None  # a response, not a query: never answer those (no loops)
        try:
            query = DNSRecord.parse(data)
        except Exception:  # dnslib raises DNSError, struct.error, UnicodeError, ...
            self.malformed += 1
            return _header_only(data, RCODE.FORMERR)
        opt = [rr for rr in query.ar if rr.rtype == QTYPE.OPT]
        try:
            return self._answer(query, opt, client, tcp)
        except QueryError as exc:
            self.malformed += 1
            reply = _reply(query, exc.rcode, aa=False)
            if opt and len(opt) == 1:
                reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
            return bytes(reply.pack())

    def _answer(self, query: DNSRecord, opt: list[RR], client: str, tcp: bool) -> bytes:
        if query.header.opcode != OPCODE.QUERY:
            # RFC 1035 section 4.1.1: NOTIMP for a kind of query we do not support.
            raise QueryError(RCODE.NOTIMP, "opcode not supported")
        if len(query.questions) != 1:
            raise QueryError(RCODE.FORMERR, "a query must ask exactly one question")
        if len(opt) > 1:
            # RFC 6891 section 6.1.1: more than one OPT RR is FORMERR.
            raise QueryError(RCODE.FORMERR, "more than one OPT record")
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
        name = str(question.qname).lower().rstrip(".")
        origin = self.zone.origin
        in_zone = name == origin or name.endswith("." + origin)
        if question.qclass not in (CLASS.IN, CLASS_ANY) or not in_zone:
            reply = _reply(query, RCODE.REFUSED, aa=False)
            return self._finish(reply, opt, subnet, 0, limit)

        reply = _reply(query, RCODE.NOERROR, aa=True)
        scope = 0
        label = name[: -len(origin) - 1] if name != origin else ""
        if label == "" or label in self.zone.services:
            if name == origin and qtype == QTYPE.SOA:
                reply.add_answer(self._soa())
            elif name == origin and qtype == QTYPE.NS:
                reply.add_answer(self._ns())
                for record in self._glue():
                    reply.add_ar(record)
            elif qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
                scope = self._add_edges(reply, query, qtype, subnet, client)
            if not reply.rr:
                reply.add_auth(self._soa())  # NODATA (RFC 2308 section 2.2)
        elif name == self.zone.nameserver_name.lower():
            for record in self._glue():
                if qtype in (record.rtype, QTYPE.ANY):
                    reply.add_answer(record)
            if not reply.rr:
                reply.add_auth(self._soa())
        else:
            # RFC 2308 section 3: NXDOMAIN with the SOA in the authority section.
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self._soa())
        return self._finish(reply, opt, subnet, scope, limit)

    def _add_edges(
        self,
        reply: DNSRecord,
        query: DNSRecord,
        qtype: int,
        subnet: ClientSubnet | None,
        client: str,
    ) -> int:
        """Answer records for the nearest edges; returns the ECS scope prefix."""
        if subnet is not None and subnet.source_prefix > 0:
            network = subnet.network
        else:
            # No ECS, or "source prefix 0": the client asked that its address not be
            # used (RFC 7871 section 7.1.2), so the resolver's address decides.
            network = ipaddress.ip_network(client)
        families = (4, 6) if qtype == QTYPE.ANY else (4 if qtype == QTYPE.A else 6,)
        choice: Choice | None = None
        for family in families:
            choice = self.router.route(network, family)
            for ranked in choice.edges:
                rdata = A(ranked.site.address) if family == 4 else AAAA(ranked.site.address)
                rtype = QTYPE.A if family == 4 else QTYPE.AAAA
                reply.add_answer(RR(query.q.qname, rtype, rdata=rdata, ttl=self.zone.ttl))
        if subnet is None or subnet.source_prefix == 0 or choice is None:
            return 0
        # RFC 7871 section 7.2.1: SCOPE is the prefix length the answer holds for. It
        # holds for the subnet we were given unless the database (or coverage zone)
        # network that decided is narrower; a scope longer than the source is allowed
        # and tells the resolver the source was not specific enough.
        scope = subnet.source_prefix
        if choice.deciding_prefix is not None:
            scope = max(scope, choice.deciding_prefix)
        return scope

    def _finish(
        self,
        reply: DNSRecord,
        opt: list[RR],
        subnet: ClientSubnet | None,
        scope: int,
        limit: int,
    ) -> bytes:
        if opt:
            options = []
            if subnet is not None:
                # RFC 7871 section 7.2.1: FAMILY, SOURCE PREFIX-LENGTH and ADDRESS are
                # copied from the query; SCOPE PREFIX-LENGTH is ours.
                data = struct.pack("!HBB", subnet.family, subnet.source_prefix, scope)
                options.append(EDNSOption(OPTION_CLIENT_SUBNET, data + subnet.address))
            reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE, opts=options))
        wire = bytes(reply.pack())
        if len(wire) <= limit:
            return wire
        # RFC 2181 section 9 / RFC 1035 section 4.2.1: too large for UDP, so set TC
        # and let the resolver ask again over TCP. The question and OPT stay.
        truncated = DNSRecord(
            DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1), q=reply.q
        )
        for record in reply.ar:
            if record.rtype == QTYPE.OPT:
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

    def _ns(self) -> RR:
        return RR(self.origin, QTYPE.NS, ttl=3600, rdata=NS(self.zone.nameserver_name))

    def _glue(self) -> list[RR]:
        records = []
        for address in self.zone.nameserver_addresses:
            if ":" in address:
                records.append(
                    RR(self.zone.nameserver_name, QTYPE.AAAA, ttl=3600, rdata=AAAA(address))
                )
            else:
                records.append(RR(self.zone.nameserver_name, QTYPE.A, ttl=3600, rdata=A(address)))
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
