"""The `edgeshield` command: one console script for every role of the fleet.

The parser carries the CLI contract of the design; each role's module is imported
only when its command runs, so `edgeshield check` stays quick and a role's
dependencies are loaded only where they are used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fleet.config import ConfigError, Fleet, load_fleet

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="edgeshield", description="A caching CDN: edges, shields, purge API and GeoDNS."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run a whole fleet on this machine (no --config: the demo)")
    up.add_argument("--config", help="fleet.toml; without it, a built-in demo fleet")
    up.add_argument("--state-dir", help="where the demo fleet keeps caches and logs")

    for role in ("edge", "shield"):
        node = sub.add_parser(role, help=f"run one {role} node")
        node.add_argument("--config", required=True, help="fleet.toml")
        node.add_argument("--node", required=True, help=f"the {role}'s name in fleet.toml")

    purge_api = sub.add_parser("purge-api", help="run the purge API, or make a token")
    purge_api.add_argument("--config", help="fleet.toml")
    purge_api.add_argument(
        "--listen",
        metavar="ADDR",
        help="host:port of this replica (default: the first of [purge_api] listen)",
    )
    purge_api_sub = purge_api.add_subparsers(dest="purge_api_command", metavar="ACTION")
    purge_api_sub.add_parser("hash-token", help="print a new purge token and its SHA-256")

    geo = sub.add_parser("geo", help="GeoDNS and GeoIP tools")
    geo_sub = geo.add_subparsers(dest="geo_command", required=True, metavar="ACTION")
    serve = geo_sub.add_parser("serve", help="run the GeoDNS server")
    serve.add_argument("--config", required=True)
    build = geo_sub.add_parser("build-mmdb", help="write an .mmdb for a simulated fleet")
    build.add_argument("--config", required=True)
    build.add_argument("-o", "--output", required=True)
    lookup = geo_sub.add_parser("lookup", help="where an address is and which edge it gets")
    lookup.add_argument("ip")
    lookup.add_argument("--config")

    purge = sub.add_parser("purge", help="purge cached objects (token from $EDGESHIELD_TOKEN)")
    purge.add_argument("--api", required=True, help="purge API base URL")
    purge.add_argument("--service", required=True)
    purge.add_argument("--url", action="append", default=[], dest="urls")
    purge.add_argument("--prefix", action="append", default=[], dest="prefixes")
    purge.add_argument("--tag", action="append", default=[], dest="tags")
    purge.add_argument("--all", action="store_true", dest="purge_all")
    purge.add_argument("--soft", action="store_true")
    purge.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    purge.add_argument("--idempotency-key")

    check = sub.add_parser("check", help="validate a fleet file")
    check.add_argument("--config", required=True)
    return parser


def _load(path: str) -> Fleet:
    return load_fleet(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"edgeshield: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "check":
        fleet = _load(args.config)
        print(
            f"{fleet.source}: ok ({len(fleet.regions)} regions, {len(fleet.services)} services, "
            f"{len(fleet.shields)} shields, {len(fleet.edges)} edges)"
        )
        return 0
    if command == "edge":
        from edge.server import serve_edge

        fleet = _load(args.config)
        fleet.edge(args.node)
        return serve_edge(fleet, args.node)
    if command == "shield":
        from shield.server import serve_shield

        fleet = _load(args.config)
        fleet.shield(args.node)
        return serve_shield(fleet, args.node)
    if command == "purge-api":
        if args.purge_api_command == "hash-token":
            from purge_api.tokens import print_new_token

            return print_new_token()
        if not args.config:
            print("edgeshield purge-api: --config is required", file=sys.stderr)
            return 2
        from purge_api.server import serve_purge_api

        return serve_purge_api(_load(args.config), args.listen)
    if command == "geo":
        from geo import cli as geo_cli

        if args.geo_command == "serve":
            return geo_cli.serve(_load(args.config))
        if args.geo_command == "build-mmdb":
            return geo_cli.build_mmdb(_load(args.config), args.output)
        return geo_cli.lookup(args.ip, _load(args.config) if args.config else None)
    if command == "purge":
        from purge_api.client import run_purge_command

        return run_purge_command(args)
    if command == "up":
        from cli.up import run_up

        return run_up(args.config, args.state_dir)
    raise AssertionError(f"unhandled command {command!r}")


if __name__ == "__main__":
    sys.exit(main())
