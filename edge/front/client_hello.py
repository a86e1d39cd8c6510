"""The server name a TLS client asks for, read from its ClientHello before TLS starts.

The TLS listener (edge/front/tls_listener.py) peeks at the first bytes of a connection
without consuming them and asks `parse_client_hello` what they hold: the hello's
`server_name` (RFC 6066 3), or how many bytes it must have before it can say more, or
`ClientHelloError` for bytes that are no ClientHello. The parser does no I/O and keeps
no state: the caller passes everything peeked so far, from the first byte, each time.

Every length is checked against what is there and against the structure around it
(RFC 8446 4.1.2 for the hello, 5.1 for records; RFC 5246 7.4.1.2 for TLS 1.2's
optional extensions). A hello may be cut into several records (RFC 8446 5.1); the
records together may take at most `MAX_HELLO_BYTES`, so a peek of that many bytes
always suffices. The server_name extension is read as OpenSSL reads it: one entry, of
type host_name, 1 to 65535 bytes; a name OpenSSL would refuse (over 255 bytes, a NUL)
comes back as it is and matches no host.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DECODE_ERROR",
    "MAX_HELLO_BYTES",
    "UNRECOGNIZED_NAME",
    "ClientHello",
    "ClientHelloError",
    "NeedMore",
    "alert_record",
    "parse_client_hello",
]

#: bytes of records (headers included) a ClientHello may take. A browser's is 0.5-2 KiB
#: (a post-quantum key share brings it near 1.9 KiB); 16 KiB is one full record.
MAX_HELLO_BYTES = 16 * 1024

#: RFC 8446 5.1: ContentType handshake(22); record header: type, version, length
HANDSHAKE_RECORD = 22
RECORD_HEADER = 5
#: RFC 8446 5.1: "The length MUST NOT exceed 2^14 bytes."
MAX_RECORD_LENGTH = 1 << 14
#: RFC 8446 4: HandshakeType client_hello(1); header: type, 24-bit length
CLIENT_HELLO = 1
HANDSHAKE_HEADER = 4
#: RFC 6066 3: ExtensionType server_name(0), NameType host_name(0)
SERVER_NAME = 0
HOST_NAME = 0


class ClientHelloError(ValueError):
    """Bytes that are not a ClientHello we accept (the reason is short, never the bytes)."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A complete ClientHello: the name it asks for (None: no server_name extension)."""

    server_name: str | None
    #: bytes of the records that carried it, headers included
    size: int


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The bytes so far are the start of a hello: wait until `at_least` bytes are there."""

    at_least: int


def parse_client_hello(data: bytes, limit: int = MAX_HELLO_BYTES) -> ClientHello | NeedMore:
    """What the first bytes of a TLS connection say: the hello's server name, that more
    bytes are needed, or (`ClientHelloError`) that they are not a ClientHello within
    `limit` bytes of records."""
    gathered = _handshake_message(data, limit)
    if isinstance(gathered, NeedMore):
        return gathered
    message, size = gathered
    return ClientHello(_server_name(message), size)


def _handshake_message(data: bytes, limit: int) -> tuple[bytes, int] | NeedMore:
    """The first handshake message's body gathered from its records, with the bytes of
    the records that carried it; or how many bytes must be there to go on."""
    fragments = bytearray()
    wanted = -1  # the message's whole length, once its header is in
    at = 0
    while wanted < 0 or len(fragments) < wanted:
        if at + RECORD_HEADER > len(data):
            return NeedMore(_needed(at + RECORD_HEADER, limit))
        content_type = data[at]
        major = data[at + 1]
        length = int.from_bytes(data[at + 3 : at + 5])
        if content_type != HANDSHAKE_RECORD:
            # RFC 8446 5.1: handshake messages are not interleaved with other records
            raise ClientHelloError("not a TLS handshake record")
        if major != 3:
            raise ClientHelloError("not a TLS record version")
        if length == 0 or length > MAX_RECORD_LENGTH:
            # RFC 8446 5.1: no zero-length handshake fragments; at most 2^14 bytes
            raise ClientHelloError("bad record length")
        end = _needed(at + RECORD_HEADER + length, limit)
        if end > len(data):
            return NeedMore(end)
        fragments += data[at + RECORD_HEADER : end]
        at = end
        if wanted < 0 and len(fragments) >= HANDSHAKE_HEADER:
            if fragments[0] != CLIENT_HELLO:
                raise ClientHelloError("first handshake message is not a ClientHello")
            wanted = HANDSHAKE_HEADER + int.from_bytes(fragments[1:4])
            if wanted > limit:
                raise ClientHelloError("ClientHello too large")
    # bytes past the hello in its last record belong to the next message: not ours
    return bytes(fragments[HANDSHAKE_HEADER:wanted]), at


def _needed(total: int, limit: int) -> int:
    """`total` bytes of records, unless they pass the bound."""
    if total > limit:
        raise ClientHelloError("ClientHello too large")
    return total


def _vector(data: bytes, at: int, end: int, size: int, low: int, high: int, what: str) -> int:
    """Where the `<low..high>` vector at `at` with a `size`-byte length (RFC 8446 3.4)
    ends, checked to fit before `end`; its bytes start at `at + size`."""
    start = at + size
    if start > end:
        raise ClientHelloError(f"{what} runs past its end")
    length = int.from_bytes(data[at:start])
    if not low <= length <= high:
        raise ClientHelloError(f"bad {what} length")
    stop = start + length
    if stop > end:
        raise ClientHelloError(f"{what} runs past its end")
    return stop


def _server_name(body: bytes) -> str | None:
    """The host_name of a ClientHello body's server_name extension (None: none)."""
    end = len(body)
    # legacy_version (2) and random (32)
    at = 34
    if at > end:
        raise ClientHelloError("random runs past its end")
    at = _vector(body, at, end, 1, 0, 32, "legacy_session_id")
    suites = at
    at = _vector(body, at, end, 2, 2, 0xFFFE, "cipher_suites")
    if (at - suites) % 2:
        raise ClientHelloError("bad cipher_suites length")
    at = _vector(body, at, end, 1, 1, 0xFF, "legacy_compression_methods")
    if at == end:
        # RFC 5246 7.4.1.2: a TLS 1.2 hello may end here, without extensions
        return None
    if _vector(body, at, end, 2, 0, 0xFFFF, "extensions") != end:
        raise ClientHelloError("bytes after the extensions")
    at += 2
    seen: set[int] = set()
    name: str | None = None
    while at < end:
        if at + 2 > end:
            raise ClientHelloError("extension type runs past its end")
        kind = int.from_bytes(body[at : at + 2])
        stop = _vector(body, at + 2, end, 2, 0, 0xFFFF, "extension")
        if kind in seen:
            # RFC 8446 4.2: no more than one extension of the same type
            raise ClientHelloError("repeated extension")
        seen.add(kind)
        if kind == SERVER_NAME:
            name = _host_name(body, at + 4, stop)
        at = stop
    return name


def _host_name(data: bytes, at: int, end: int) -> str:
    """RFC 6066 3's ServerNameList, as OpenSSL takes it: exactly one host_name."""
    if _vector(data, at, end, 2, 1, 0xFFFF, "server_name_list") != end:
        raise ClientHelloError("bytes after the server_name_list")
    at += 2
    if data[at] != HOST_NAME:
        raise ClientHelloError("server name of an unknown type")
    if _vector(data, at + 1, end, 2, 1, 0xFFFF, "host_name") != end:
        raise ClientHelloError("more than one server name")
    # latin-1 maps every byte: a name that is not ASCII matches no host, and is refused
    return data[at + 3 : end].decode("latin-1")


#: RFC 8446 6: AlertDescription values the listener sends
UNRECOGNIZED_NAME = 112
DECODE_ERROR = 50


def alert_record(description: int) -> bytes:
    """A fatal alert as one plaintext record (RFC 8446 5.1 and 6): content type
    alert(21), legacy version 0x0303, length 2, level fatal(2), the description."""
    return bytes((21, 3, 3, 0, 2, 2, description))
