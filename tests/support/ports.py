"""Free loopback ports for tests that must name a port before a process starts.

A port is drawn at random below the kernel's ephemeral range (where `bind(0)` and
every outgoing connection take their local ports), so the time between choosing a
port and a process listening on it cannot be lost to some connection's source port
on a busy machine; it is checked to be free for TCP and UDP when handed out.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_handed_out: set[int] = set()

#: where ports are drawn from when the ephemeral range cannot be read
_DEFAULT_RANGE = (10_000, 32_000)


def _draw_range() -> tuple[int, int]:
    """Ports below the ephemeral range (and above the well-known and common ones)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_RANGE
    if low <= 12_000:
        return _DEFAULT_RANGE  # an unusual kernel setting: fall back, collisions or not
    return 10_000, low - 1


_RANGE = _draw_range()


def _bindable(host: str, port: int) -> bool:
    """Whether TCP (as a server binds it) and UDP `port` are both free on `host` now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free for TCP and UDP on `host` now and not handed out before
    (`kind` is accepted for callers that name the protocol they need: both are free)."""
    low, high = _RANGE
    while True:
        port = random.randint(low, high)
        if port in _handed_out or not _bindable(host, port):
            continue
        _handed_out.add(port)
        return port
