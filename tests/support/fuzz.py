"""Helpers for fuzzing running processes over raw sockets: strategies and one exchange.

`request_heads()` draws HTTP/1.1 request heads (method, target, version, fields) with
the odd bytes a hostile client can put on a socket; `exchange()` sends one request on
a new connection and says what came back: a well-formed response head, a clean close,
or nothing within the time (which only a request that announced a body may cause).
"""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass

from hypothesis import strategies as st

from tests.support.connection_limits import HOST

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?$")
_FIELD_NAME = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"]
METHODS += [b"PATCH", b"PURGE", b"BREW", b"get", b"G\x00T", b""]
TARGETS = [b"/", b"*", b"http://www.example.com/a", b"//x", b"/a?b=c&utm_source=1&gclid=2"]
TARGETS += [b"/%00", b"/../../etc/passwd", b"/%2e%2e/", b"/a#frag", b"/" + b"a" * 9000, b""]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"HTTP/0.9", b"", b"http/1.1"]
NAMES = [
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Range",
    b"If-Range",
    b"If-None-Match",
    b"If-Modified-Since",
    b"Accept-Encoding",
    b"Cache-Control",
    b"Pragma",
    b"Connection",
    b"Expect",
    b"Upgrade",
    b"Cookie",
    b"Authorization",
    b"Forwarded",
    b"X-Forwarded-For",
    b"CDN-Loop",
    b"Via",
    b"TE",
    b"Content-Encoding",
    b"Surrogate-Control",
    b"X-Edgeshield-Stale",
]
VALUES = [
    b"bytes=0-",
    b"bytes=-1,0-0,1-2",
    b"bytes=99999999999999999999-",
    b"chunked",
    b"gzip, chunked",
    b"-1",
    b"99999999999999999999",
    b"0",
    b"100-continue",
    b"websocket",
    b"close, Upgrade",
    b"keep-alive, Host, Cookie",
    b"no-cache",
    b"only-if-cached",
    b"max-age=-1, no-store",
    b"*",
    b'W/"x", "y"',
    b"Thu, 01 Jan 1970 00:00:00 GMT",
    b"br;q=1e9, gzip;q=-1, *;q=nan",
    b"www.example.com:99999",
    b"\xff\xfe\xfd",
    b"a\x00b",
    b" ",
    b"",
]


def _either(choices: list[bytes], max_size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(choices), st.binary(max_size=max_size))


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """A request head (and maybe a few body bytes) as a hostile client might send it."""
    method = draw(_either(METHODS, 12))
    target = draw(_either(TARGETS, 200))
    version = draw(_either(VERSIONS, 10))
    lines = [method + b" " + target + b" " + version]
    if draw(st.booleans()) or draw(st.booleans()):
        lines.append(b"Host: " + HOST.encode())
    fields = draw(st.lists(st.tuples(_either(NAMES, 30), _either(VALUES, 120)), max_size=8))
    lines += [name + b": " + value for name, value in fields]
    body = draw(st.one_of(st.just(b""), st.binary(max_size=64)))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class Outcome:
    """What one exchange gave: the status (None: closed or silent) and what was read."""

    status: int | None
    closed: bool
    data: bytes


def exchange(address: tuple[str, int], request: bytes, timeout: float = 5.0) -> Outcome:
    """Send `request` on a new connection; read until the end of a response head."""
    data = b""
    closed = False
    with socket.create_connection(address, timeout=timeout) as sock:
        # the server may close early; what it said is still to be read
        with contextlib.suppress(OSError):
            sock.sendall(request)
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                data += chunk
        except TimeoutError:
            pass
        except OSError:
            closed = True
    if not data:
        return Outcome(None, closed, data)
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    match = _STATUS_LINE.match(lines[0])
    if match is None or b"\r\n\r\n" not in data:
        raise AssertionError(f"not a well-formed response head: {data[:300]!r}")
    for line in lines[1:]:
        name, sep, _ = line.partition(b":")
        if not sep or not _FIELD_NAME.match(name):
            raise AssertionError(f"malformed response field line {line[:200]!r}")
    return Outcome(int(match.group(1)), closed, data)


def announces_a_body(request: bytes) -> bool:
    """Whether the head names framing (so the server may rightly wait for a body)."""
    head = request.split(b"\r\n\r\n", 1)[0].lower()
    return b"content-length" in head or b"transfer-encoding" in head or b"expect" in head
