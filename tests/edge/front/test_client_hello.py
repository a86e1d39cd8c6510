"""The ClientHello parser (edge/front/client_hello.py): real hellos whole, at every
byte boundary and split into records; each malformation refused with our error; and,
with Hypothesis, no input makes it raise anything else."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.front.client_hello import (
    MAX_HELLO_BYTES,
    ClientHello,
    ClientHelloError,
    NeedMore,
    alert_record,
    parse_client_hello,
)
from tests.support.sni import UNRECOGNIZED_NAME_ALERT, client_hello

NAME = "www.one.test"


def vector(size: int, data: bytes) -> bytes:
    return len(data).to_bytes(size) + data


def sni_extension(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + vector(2, name) for name in names)
    return struct.pack(">H", 0) + vector(2, vector(2, entries))


def hello_body(
    extensions: bytes | None = b"",
    *,
    session_id: bytes = b"\x01" * 32,
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
) -> bytes:
    body = b"\x03\x03" + b"\x07" * 32 + vector(1, session_id) + vector(2, suites)
    body += vector(1, compression)
    if extensions is not None:
        body += vector(2, extensions)
    return body


def handshake(body: bytes, kind: int = 1) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3) + body


def records(message: bytes, size: int = 1 << 14, version: bytes = b"\x03\x01") -> bytes:
    """`message` cut into handshake records of at most `size` bytes."""
    out = b""
    for at in range(0, len(message), size):
        fragment = message[at : at + size]
        out += b"\x16" + version + struct.pack(">H", len(fragment)) + fragment
    return out


def built(name: bytes | None, **kwargs: bytes) -> bytes:
    ext = b"" if name is None else sni_extension(name)
    # a second extension after the name: supported_versions (RFC 8446 4.2.1)
    ext += struct.pack(">H", 43) + vector(2, vector(1, b"\x03\x04"))
    return records(handshake(hello_body(ext, **kwargs)))


@pytest.mark.parametrize(
    "maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
@pytest.mark.parametrize("name", [NAME, None], ids=["sni", "no-sni"])
def test_a_real_hello_gives_its_name_and_size(maximum: ssl.TLSVersion, name: str | None) -> None:
    data = client_hello(name, maximum=maximum)
    assert parse_client_hello(data) == ClientHello(name, len(data))


def test_every_prefix_of_a_hello_asks_for_more_bytes_than_it_has() -> None:
    data = client_hello(NAME)
    for cut in range(len(data)):
        result = parse_client_hello(data[:cut])
        assert isinstance(result, NeedMore), cut
        assert cut < result.at_least <= len(data)


def test_bytes_after_the_hello_are_left_alone() -> None:
    data = client_hello(NAME)
    change_cipher_spec = b"\x14\x03\x03\x00\x01\x01"
    assert parse_client_hello(data + change_cipher_spec) == ClientHello(NAME, len(data))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 100, 511])
def test_a_hello_split_into_records_is_gathered(size: int) -> None:
    message = client_hello(NAME)[5:]
    data = records(message, size)
    assert parse_client_hello(data) == ClientHello(NAME, len(data))
    # every boundary still asks for more, never past the bound
    for cut in range(0, len(data), 7):
        result = parse_client_hello(data[:cut])
        assert isinstance(result, NeedMore)
        assert result.at_least > cut


def test_a_hello_of_tls_1_2_without_extensions_has_no_name() -> None:
    data = records(handshake(hello_body(None)))
    assert parse_client_hello(data) == ClientHello(None, len(data))


def test_a_name_that_is_not_ascii_is_returned_to_match_no_host() -> None:
    result = parse_client_hello(built("caf\xe9.test".encode("latin-1")))
    assert isinstance(result, ClientHello)
    assert result.server_name == "caf\xe9.test"


MALFORMED = {
    "plain-http": b"GET / HTTP/1.1\r\nHost: www.one.test\r\n\r\n",
    "application-data-first": b"\x17\x03\x03\x00\x05hello",
    "alert-first": alert_record(112),
    "sslv2-version": b"\x16\x02\x00\x00\x05hello",
    "zero-length-record": b"\x16\x03\x01\x00\x00",
    "record-over-2^14": b"\x16\x03\x01\x40\x01" + b"\x01" * 100,
    "server-hello": records(handshake(hello_body(b""), kind=2)),
    "hello-length-over-the-bound": records(b"\x01\x01\x00\x00" + b"\x00" * 100),
    "session-id-over-32": records(handshake(hello_body(b"", session_id=b"\x01" * 33))),
    "odd-cipher-suites": records(handshake(hello_body(b"", suites=b"\x13\x01\x13"))),
    "no-cipher-suites": records(handshake(hello_body(b"", suites=b""))),
    "no-compression-method": records(handshake(hello_body(b"", compression=b""))),
    "extensions-past-the-end": records(handshake(hello_body(None) + b"\x00\x10\x00\x00")),
    "bytes-after-extensions": records(handshake(hello_body(b"") + b"\x00")),
    "repeated-extension": records(
        handshake(hello_body(sni_extension(b"a.test") + sni_extension(b"b.test")))
    ),
    "two-names": records(handshake(hello_body(sni_extension(b"a.test", b"b.test")))),
    "name-of-another-type": records(handshake(hello_body(sni_extension(b"a.test", name_type=1)))),
    "empty-name": records(handshake(hello_body(sni_extension(b"")))),
    "empty-name-list": records(handshake(hello_body(struct.pack(">H", 0) + vector(2, b"\0\0")))),
    "hello-body-short-of-its-length": records(b"\x01\x00\x00\x30" + hello_body(b"")[:0x30]),
    # RFC 8446 5.1: another record type in the middle of the hello's records
    "interleaved-record": b"\x16\x03\x01\x00\x02\x01\x00" + alert_record(40),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_hello_is_refused_with_our_error(data: bytes) -> None:
    with pytest.raises(ClientHelloError) as refused:
        parse_client_hello(data)
    # the reason is short and never carries the bytes
    assert len(str(refused.value)) < 80
    assert "www.one.test" not in str(refused.value)


def test_a_hello_in_tiny_records_over_the_bound_is_refused_before_it_is_whole() -> None:
    # 3 KiB of padding (RFC 7685): fine in one record, 18 KiB of 1-byte records
    padding = struct.pack(">H", 21) + vector(2, b"\0" * 3000)
    message = handshake(hello_body(sni_extension(NAME.encode()) + padding))
    assert isinstance(parse_client_hello(records(message)), ClientHello)
    data = records(message, 1)
    assert len(data) > MAX_HELLO_BYTES
    with pytest.raises(ClientHelloError):
        parse_client_hello(data)
    # refused as soon as the bytes needed pass the bound, not once they are all there
    with pytest.raises(ClientHelloError):
        parse_client_hello(data[: MAX_HELLO_BYTES - 2])
    assert isinstance(parse_client_hello(data[: MAX_HELLO_BYTES - 6]), NeedMore)


def test_the_alert_record_is_a_fatal_alert() -> None:
    assert alert_record(112) == UNRECOGNIZED_NAME_ALERT


def _outcome(data: bytes) -> ClientHello | NeedMore | None:
    try:
        return parse_client_hello(data)
    except ClientHelloError:
        return None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_raise_our_error(data: bytes) -> None:
    result = _outcome(data)
    if isinstance(result, NeedMore):
        assert len(data) < result.at_least <= MAX_HELLO_BYTES


REAL = client_hello(NAME)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(REAL) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, len(REAL)),
)
def test_a_damaged_real_hello_parses_or_raises_our_error(
    edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(REAL)
    for at, value in edits:
        data[at] = value
    result = _outcome(bytes(data[:cut]) if cut else bytes(data))
    if isinstance(result, ClientHello):
        assert result.size <= len(data)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.none(), st.binary(min_size=1, max_size=300)),
    st.integers(1, 600),
    st.binary(max_size=32),
)
def test_a_built_hello_gives_back_its_name_however_it_is_cut(
    name: bytes | None, size: int, session_id: bytes
) -> None:
    message = handshake(
        hello_body(
            (b"" if name is None else sni_extension(name))
            + struct.pack(">H", 43)
            + vector(2, vector(1, b"\x03\x04")),
            session_id=session_id,
        )
    )
    data = records(message, size)
    expected = None if name is None else name.decode("latin-1")
    if len(data) > MAX_HELLO_BYTES:
        with pytest.raises(ClientHelloError):
            parse_client_hello(data)
    else:
        assert parse_client_hello(data) == ClientHello(expected, len(data))
