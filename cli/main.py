"""The `edgeshield` command: one console script for every role of the fleet.

The parser carries the CLI contract of the design; each role's module is imported
only when its command runs, so `edgeshield check` stays quick and a role's
dependencies are loaded only where they are used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fleet.config import ConfigError, Fleet, check_whole_fleet, load_fleet
from runtime.version import version

__all__ = ["EXIT_CANNOT_START", "EXIT_FAILED", "EXIT_OK", "build_parser", "main"]

EXIT_OK = 0
#: a node or command failed while running
EXIT_FAILED = 1
#: cannot start as configured: a bad fleet file, a port in use, bad arguments
EXIT_CANNOT_START = 2
#: stopped by Ctrl-C (128 + SIGINT)
EXIT_INTERRUPTED = 130

EXIT_CODES = """exit status:
  0    done (a server: stopped cleanly by SIGTERM or Ctrl-C)
  1    failed while running
  2    cannot start as configured: bad arguments, a fleet file with errors (every
       one is printed), an address already in use
  130  interrupted (Ctrl-C)"""

EXAMPLES = """examples:
  edgeshield up                                   the demo fleet, on this machine
  edgeshield check --config examples/fleet.toml   every error of a fleet file at once
  edgeshield edge --config fleet.toml --node edge-eu
  EDGESHIELD_TOKEN=... edgeshield purge --api http://127.0.0.1:9300 --service site \\
      --url /index.html --wait 10
  edgeshield inspect https://www.example.com/ --config fleet.toml

A running node re-reads its fleet file on SIGHUP (kill -HUP PID): services, hosts,
origins and limits change live; a changed listen address or cache_dir is refused
(the node says which key and keeps running)."""

PURGE_HELP = """examples:
  export EDGESHIELD_TOKEN=...     (the token; never on the command line)
  edgeshield purge --api http://127.0.0.1:9300 --service site --url /index.html
  edgeshield purge --api http://127.0.0.1:9300 --service site --prefix /img/ --soft
  edgeshield purge --api http://127.0.0.1:9300 --service site --tag product-42 --wait 10

exit status:
  0  complete (with --wait), or accepted (without)
  1  the purge API could not be reached or failed (the message says how)
  2  bad input (nothing to purge, a bad URL, a refused body)
  3  no token, or the token was refused (401/403)
  4  --wait ran out before every node acknowledged (the missing nodes are named)"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="edgeshield",
        description="A caching CDN: edges, shields, purge API and GeoDNS.",
        epilog=f"{EXAMPLES}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgeshield {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run a whole fleet on this machine (no --config: the demo)",
        epilog="examples:\n  edgeshield up\n  edgeshield up --config examples/fleet.toml\n\n"
        + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--config", help="fleet.toml; without it, a built-in demo fleet")
    up.add_argument(
        "--state-dir",
        help="where the demo fleet keeps caches and logs (kept after it stops); without "
        "it, a temporary directory removed at the end",
    )
    up.add_argument(
        "--keep-state",
        action="store_true",
        help="with --config: keep the cache and data directories up created (default: "
        "removed when the fleet stops)",
    )

    for role in ("edge", "shield"):
        node = sub.add_parser(
            role,
            help=f"run one {role} node",
            epilog=f"example:\n  edgeshield {role} --config fleet.toml --node {role}1\n"
            "SIGHUP reloads the fleet file; SIGTERM stops.\n\n" + EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
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
    serve.add_argument("--config", required=True, help="fleet.toml (its [geo] table)")
    build = geo_sub.add_parser("build-mmdb", help="write an .mmdb for a simulated fleet")
    build.add_argument("--config", required=True, help="fleet.toml (regions' client networks)")
    build.add_argument("-o", "--output", required=True, help="the .mmdb file to write")
    lookup = geo_sub.add_parser("lookup", help="where an address is and which edge it gets")
    lookup.add_argument("ip", help="an IPv4 or IPv6 address")
    lookup.add_argument("--config", help="fleet.toml, to name the edge the address gets")

    purge = sub.add_parser(
        "purge",
        help="purge cached objects (token from $EDGESHIELD_TOKEN)",
        epilog=PURGE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    purge.add_argument(
        "--api",
        required=True,
        metavar="URL",
        help="the purge API's base URL, e.g. http://127.0.0.1:9300",
    )
    purge.add_argument(
        "--service", required=True, metavar="NAME", help="the service's name in fleet.toml"
    )
    purge.add_argument(
        "--url",
        action="append",
        default=[],
        dest="urls",
        metavar="URL",
        help="a URL to purge: absolute (https://host/path) or a path on every host of the "
        "service; repeatable",
    )
    purge.add_argument(
        "--prefix",
        action="append",
        default=[],
        dest="prefixes",
        metavar="PREFIX",
        help="purge every URL under this prefix (absolute or a path); repeatable",
    )
    purge.add_argument(
        "--tag",
        action="append",
        default=[],
        dest="tags",
        metavar="TAG",
        help="purge every object the origin tagged so (its Surrogate-Key); repeatable",
    )
    purge.add_argument(
        "--all", action="store_true", dest="purge_all", help="purge the whole service"
    )
    purge.add_argument(
        "--soft",
        action="store_true",
        help="mark stale instead of removing (revalidated on the next request)",
    )
    purge.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS until every node acknowledged (default: do not wait)",
    )
    purge.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the same key again returns the first purge, never a second (default: a new one)",
    )

    check = sub.add_parser(
        "check",
        help="validate a fleet file (every error at once)",
        epilog="example:\n  edgeshield check --config examples/fleet.toml\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--config", required=True, help="the fleet file to check")

    inspect = sub.add_parser(
        "inspect",
        help="ask every node what it holds for a URL",
        epilog="example:\n  EDGESHIELD_NODE_SECRET=... edgeshield inspect "
        "http://www.example.com/ --config fleet.toml\n\n"
        "exit status: 0 every node answered, 1 some node could not be asked, 2 bad input",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("url", help="the URL as clients ask for it (http://HOST/PATH)")
    inspect.add_argument("--config", required=True, help="fleet.toml (the nodes to ask)")
    inspect.add_argument("--node", action="append", default=[], help="ask only this node")
    inspect.add_argument("--json", action="store_true", help="print the answers as JSON")
    return parser


def _load(path: str) -> Fleet:
    return load_fleet(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        errors = exc.errors
        if len(errors) > 1:
            print(f"edgeshield: {len(errors)} errors in {exc.source}:", file=sys.stderr)
        for error in errors:
            print(f"edgeshield: {error}", file=sys.stderr)
        return EXIT_CANNOT_START
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _preflight(
    fleet: Fleet, command: str, who: str, node: str | None = None, listen: str | None = None
) -> None:
    """Exit with one line if an address this command listens on is taken."""
    from cli.preflight import busy_address, listeners_of

    message = busy_address(listeners_of(fleet, command, node, listen), who)
    if message is not None:
        print(f"edgeshield {message}", file=sys.stderr)
        raise SystemExit(EXIT_CANNOT_START)


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "check":
        fleet = _load(args.config)
        check_whole_fleet(fleet)
        for service in fleet.services:
            for warning in service.traffic.warnings:
                print(f"{fleet.source}: warning: {warning}", file=sys.stderr)
        if _tls_findings(fleet):
            return 2
        print(
            f"{fleet.source}: ok ({len(fleet.regions)} regions, {len(fleet.services)} services, "
            f"{len(fleet.shields)} shields, {len(fleet.edges)} edges)"
        )
        return 0
    if command == "edge":
        from edge.server import serve_edge

        fleet = _load(args.config)
        fleet.edge(args.node)
        _preflight(fleet, "edge", f"edge {args.node}", args.node)
        return serve_edge(fleet, args.node)
    if command == "shield":
        from shield.server import serve_shield

        fleet = _load(args.config)
        fleet.shield(args.node)
        _preflight(fleet, "shield", f"shield {args.node}", args.node)
        return serve_shield(fleet, args.node)
    if command == "purge-api":
        if args.purge_api_command == "hash-token":
            from purge_api.tokens import print_new_token

            return print_new_token()
        if not args.config:
            print("edgeshield purge-api: --config is required", file=sys.stderr)
            return 2
        from purge_api.server import serve_purge_api

        fleet = _load(args.config)
        _preflight(fleet, "purge-api", "purge-api", listen=args.listen)
        return serve_purge_api(fleet, args.listen)
    if command == "geo":
        from geo import cli as geo_cli

        if args.geo_command == "serve":
            fleet = _load(args.config)
            _preflight(fleet, "geo", "geo")
            return geo_cli.serve(fleet)
        if args.geo_command == "build-mmdb":
            return geo_cli.build_mmdb(_load(args.config), args.output)
        return geo_cli.lookup(args.ip, _load(args.config) if args.config else None)
    if command == "purge":
        from purge_api.client import run_purge_command

        return run_purge_command(args)
    if command == "up":
        from cli.up import run_up

        return run_up(args.config, args.state_dir, keep_state=args.keep_state)
    if command == "inspect":
        from cli.inspection import run_inspect

        return run_inspect(_load(args.config), args.url, args.node, as_json=args.json)
    raise AssertionError(f"unhandled command {command!r}")


def _tls_findings(fleet: Fleet) -> bool:
    """Print the TLS files' errors and warnings (fleet.tls); True when there are errors."""
    from fleet.tls import check_tls

    report = check_tls(fleet)
    for warning in report.warnings:
        print(f"edgeshield: warning: {warning}", file=sys.stderr)
    for error in report.errors:
        print(f"edgeshield: {error}", file=sys.stderr)
    return bool(report.errors)


if __name__ == "__main__":
    sys.exit(main())
