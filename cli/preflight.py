"""Before a process of the fleet starts: are its listen addresses free?

A port already in use would otherwise end the process with a traceback from deep in
the event loop; here it is one line naming the address, the key, the node and what
to do, and the exit status says "cannot start as configured" (2), which `up` does
not retry.
"""

from __future__ import annotations

import errno
import socket

from fleet.config import Fleet, split_host_port

__all__ = ["busy_address", "listeners_of"]


def listeners_of(
    fleet: Fleet, command: str, node: str | None = None, listen: str | None = None
) -> list[tuple[str, str]]:
    """(where in fleet.toml, address) of every socket `command` will listen on
    (`listen`: the address a purge API replica was given with --listen)."""
    if command in ("edge", "shield") and node is not None:
        config = fleet.edge(node) if command == "edge" else fleet.shield(node)
        table = f"[[{command}s]] {node}"
        found = [
            (f"{table} listen", config.listen),
            (f"{table} admin_listen", config.admin_listen),
        ]
        if config.tls_listen:
            found.append((f"{table} tls_listen", config.tls_listen))
        return found
    if command == "purge-api" and listen:
        try:
            split_host_port(listen)
        except ValueError:
            return []  # the command itself refuses it, naming the flag
        return [("--listen", listen)]
    if command == "purge-api" and fleet.purge_api is not None:
        return [("[purge_api] listen", fleet.purge_api.listen)]
    if command == "geo" and fleet.geo is not None:
        return [
            ("[geo] dns_listen", fleet.geo.dns_listen),
            ("[geo] dns_listen (UDP)", fleet.geo.dns_listen),
            ("[geo] http_listen", fleet.geo.http_listen),
        ]
    return []


def busy_address(listeners: list[tuple[str, str]], who: str) -> str | None:
    """The one-line message for the first address that cannot be listened on, if any."""
    for where, address in listeners:
        host, port = split_host_port(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        kind = socket.SOCK_DGRAM if where.endswith("(UDP)") else socket.SOCK_STREAM
        where = where.removesuffix(" (UDP)")
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if exc.errno == errno.EADDRINUSE:
                    hint = "stop the process that holds it, or change"
                elif exc.errno == errno.EADDRNOTAVAIL:
                    hint = "this machine has no such address; change"
                elif exc.errno == errno.EACCES:
                    hint = "ports below 1024 need privileges; change"
                else:
                    hint = "change"
                return (
                    f"{who}: cannot listen on {address}: {reason}; {hint} {where} in the fleet file"
                )
    return None
