"""`edgeshield purge-api --config F [--listen ADDR]`: run a purge API replica until SIGTERM.

With `[purge_api] log = "jetstream"` any number of replicas share the log, each on its
own address (`--listen`, or the first of `[purge_api] listen`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from fleet.config import Fleet, node_secret, split_host_port
from purge_api.app import PurgeApi
from purge_api.logs import LogUnavailable
from runtime.errors import install_repeat_filter
from runtime.http_errors import TerseAppRunner

__all__ = ["serve_purge_api"]


def serve_purge_api(fleet: Fleet, listen: str | None = None) -> int:
    """Serve the purge API of `fleet` on `listen` (default: the fleet's); the exit status."""
    if fleet.purge_api is None:
        print(f"edgeshield purge-api: {fleet.source} has no [purge_api] table", file=sys.stderr)
        return 2
    address = listen or fleet.purge_api.listen
    try:
        split_host_port(address)
    except ValueError as exc:
        print(f"edgeshield purge-api: --listen: {exc}", file=sys.stderr)
        return 2
    secret = node_secret(fleet)
    if not secret:
        env = fleet.security.node_secret_env
        print(f"edgeshield purge-api: the node secret is not set: export {env}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    install_repeat_filter()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(_serve(fleet, secret, address))


async def _serve(fleet: Fleet, secret: str, address: str) -> int:
    assert fleet.purge_api is not None
    api = PurgeApi(fleet, secret)
    runner = TerseAppRunner(api.app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    try:
        await runner.setup()
    except LogUnavailable as exc:
        print(f"edgeshield purge-api: the purge log is unavailable: {exc}", file=sys.stderr)
        return 1
    host, port = split_host_port(address)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(
        f"purge-api ready on {address} (log {api.log.description}, head {api.fanout.head}, "
        f"{len(fleet.nodes)} nodes)",
        flush=True,
    )
    await stop.wait()
    await runner.cleanup()
    return 0
