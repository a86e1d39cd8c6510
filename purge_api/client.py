"""`edgeshield purge ...`: the CI client of the purge API.

Sends one purge (token from $EDGESHIELD_TOKEN), then, with --wait, follows it until
every node has acknowledged, printing progress. Exit status: 0 complete (or accepted,
without --wait); 2 bad input; 3 refused token; 4 the wait ran out (the nodes that
have not acknowledged are named); 1 anything else (API unreachable, rate limited).
An Idempotency-Key (one is made up when not given) makes the client's own retries,
and a re-run with the same --idempotency-key, return the first purge. `--api` may
name several replicas, comma-separated: each try goes to the next one (the key holds
across replicas of a JetStream log), and so does following the purge.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from typing import Any

import aiohttp

from runtime.errors import describe_client_error

__all__ = [
    "EXIT_AUTH",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_TIMED_OUT",
    "run_purge_command",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_AUTH = 3
EXIT_TIMED_OUT = 4

TOKEN_ENV = "EDGESHIELD_TOKEN"
POLL_INTERVAL = 0.1
POST_ATTEMPTS = 4


class _Failure(Exception):
    """Ends the command with a message and an exit status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def run_purge_command(args: argparse.Namespace) -> int:
    """Run `edgeshield purge` with parsed arguments; the exit status."""
    try:
        return asyncio.run(_run(args))
    except _Failure as exc:
        print(f"edgeshield purge: {exc}", file=sys.stderr)
        return exc.status


async def _run(args: argparse.Namespace) -> int:
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise _Failure(EXIT_AUTH, f"no token: set {TOKEN_ENV}")
    body = {
        "urls": list(args.urls),
        "prefixes": list(args.prefixes),
        "tags": list(args.tags),
        "all": bool(args.purge_all),
        "soft": bool(args.soft),
    }
    if not (args.urls or args.prefixes or args.tags or args.purge_all):
        raise _Failure(EXIT_BAD_INPUT, "nothing to purge: give --url, --prefix, --tag or --all")
    if args.wait < 0:
        raise _Failure(EXIT_BAD_INPUT, "--wait must not be negative")
    apis = [api.strip().rstrip("/") for api in args.api.split(",") if api.strip()]
    if not apis:
        raise _Failure(EXIT_BAD_INPUT, "--api: give the purge API's base URL")
    for api in apis:
        if not api.startswith(("http://", "https://")) or len(api) < 10:
            raise _Failure(
                EXIT_BAD_INPUT,
                f"--api {api[:60]!r} is not an http:// or https:// URL "
                "(e.g. --api http://127.0.0.1:9300)",
            )
    headers = {
        "Authorization": f"Bearer {token}",
        "Idempotency-Key": args.idempotency_key or uuid.uuid4().hex,
    }
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30.0, sock_connect=5.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        urls = [f"{api}/v1/services/{args.service}/purge" for api in apis]
        status, turn = await _post(session, urls, body, headers)
        api = apis[turn]
        kind = "soft purge" if args.soft else "purge"
        print(
            f"{kind} {status['id']} (seq {status['seq']}) accepted: "
            f"{status['acked']}/{status['total']} nodes acked",
            flush=True,
        )
        if status["status"] == "complete":
            return _complete(status)
        if args.wait <= 0:
            print(f"not waiting; follow it at {api}/v1/purges/{status['id']}")
            return EXIT_OK
        deadline = started + args.wait
        acked = status["acked"]
        purge_id = status["id"]
        while time.monotonic() < deadline:
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
            status_url = f"{apis[turn]}/v1/purges/{purge_id}"
            try:
                status = await _get(session, status_url, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                print(
                    f"  status check failed ({describe_client_error(exc, status_url)}); retrying",
                    file=sys.stderr,
                )
                turn = (turn + 1) % len(apis)  # the next replica, if there are several
                continue
            if status["acked"] != acked:
                acked = status["acked"]
                print(f"  {acked}/{status['total']} nodes acked", flush=True)
            if status["status"] == "complete":
                return _complete(status)
        pending = ", ".join(status.get("pending", [])) or "(unknown)"
        raise _Failure(
            EXIT_TIMED_OUT,
            f"the wait ran out after {args.wait:g}s: {status['acked']}/{status['total']} "
            f"nodes acked; not acknowledged: {pending}",
        )


def _complete(status: dict[str, Any]) -> int:
    print(
        f"complete: all {status['total']} nodes acknowledged; "
        f"propagation {status['propagation_ms']:.1f} ms",
        flush=True,
    )
    return EXIT_OK


async def _post(
    session: aiohttp.ClientSession,
    urls: list[str],
    body: dict[str, object],
    headers: dict[str, str],
) -> tuple[dict[str, Any], int]:
    """POST the purge, retrying connection failures and 5xx (safe: Idempotency-Key).

    Each try goes to the next of `urls` (the replicas); (answer, index of the one
    that answered).
    """
    delay = 0.5
    attempts = max(POST_ATTEMPTS, len(urls))
    for attempt in range(1, attempts + 1):
        turn = (attempt - 1) % len(urls)
        url = urls[turn]
        try:
            async with session.post(url, json=body, headers=headers) as response:
                data = await _json(response)
                if response.status in (200, 202):
                    return data, turn
                if response.status < 500 or attempt == attempts:
                    raise _refused(response.status, data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if attempt == attempts:
                raise _Failure(
                    EXIT_FAILED,
                    f"{describe_client_error(exc, url)} (tried {attempts} times; "
                    "is the purge API running there?)",
                ) from None
        if turn == len(urls) - 1:  # every replica tried once more: back off
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, Any]:
    async with session.get(url, headers=headers) as response:
        data = await _json(response)
        if response.status != 200:
            raise _refused(response.status, data)
        return data


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await response.json(content_type=None)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"error": (await response.text())[:300]}
    return data


def _refused(status: int, data: dict[str, Any]) -> _Failure:
    message = str(data.get("error", "no reason given"))
    if status in (401, 403):
        return _Failure(EXIT_AUTH, f"refused ({status}): {message}")
    if status in (400, 404, 413, 415, 422):
        return _Failure(EXIT_BAD_INPUT, f"bad request ({status}): {message}")
    if status == 429:
        retry = f"{data['retry_after']}s" if "retry_after" in data else "a while"
        return _Failure(EXIT_FAILED, f"rate limited (429): {message}; try again in {retry}")
    return _Failure(EXIT_FAILED, f"the purge API answered {status}: {message}")
