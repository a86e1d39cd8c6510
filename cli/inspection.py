"""`edgeshield inspect URL --config fleet.toml`: what every node holds for a URL.

Asks each node's admin listener (`GET /v1/cache?url=`, node secret from the variable
`[security]` names) at once and prints one block per node, shields first (the order
a request's misses go): each variant's size, age, freshness left, ETag, checksum
state and purge verdict. Exit status: 0 every node answered, 1 some could not be
asked, 2 bad input (no secret, an unknown node).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import quote

import aiohttp

from fleet.config import Fleet, NodeConfig, node_secret
from runtime.errors import describe_client_error

__all__ = ["run_inspect"]


def run_inspect(fleet: Fleet, url: str, only: list[str], *, as_json: bool = False) -> int:
    """Ask the fleet's nodes (or those named in `only`) about `url`; the exit status."""
    secret = node_secret(fleet)
    if not secret:
        env = fleet.security.node_secret_env
        print(f"edgeshield inspect: set the node secret in ${env}", file=sys.stderr)
        return 2
    nodes = [n for n in fleet.nodes if not only or n.name in only]
    unknown = sorted(set(only) - {n.name for n in fleet.nodes})
    if unknown:
        print(f"edgeshield inspect: no node named {', '.join(unknown)}", file=sys.stderr)
        return 2
    answers = asyncio.run(_ask_all(nodes, url, secret))
    if as_json:
        print(json.dumps(dict(answers), indent=2))
    else:
        for name, answer in answers:
            for line in _lines(name, answer):
                print(line)
    return 1 if any("error" in answer and "status" not in answer for _, answer in answers) else 0


async def _ask_all(nodes: list[NodeConfig], url: str, secret: str) -> list[tuple[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=10.0, sock_connect=3.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        found = await asyncio.gather(*(_ask(session, node, url, secret) for node in nodes))
    return [(node.name, answer) for node, answer in zip(nodes, found, strict=True)]


async def _ask(
    session: aiohttp.ClientSession, node: NodeConfig, url: str, secret: str
) -> dict[str, Any]:
    where = f"{node.admin_url}/v1/cache?url={quote(url, safe='')}"
    try:
        async with session.get(where, headers={"Authorization": f"Bearer {secret}"}) as response:
            data = await response.json(content_type=None)
            if response.status != 200:
                reason = data.get("error") if isinstance(data, dict) else None
                return {"error": f"answered {response.status}: {reason or 'no reason given'}"}
            return data if isinstance(data, dict) else {"error": "an answer that is not JSON"}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"error": describe_client_error(exc, where)}


def _lines(name: str, answer: dict[str, Any]) -> list[str]:
    if "error" in answer:
        return [f"{name}: {answer['error']}"]
    if not answer.get("cached"):
        return [f"{name}: not cached"]
    lines = [f"{name}: {len(answer['variants'])} variant(s)"]
    if answer.get("vary"):
        lines[0] += f", varies on {', '.join(answer['vary'])}"
    for variant in answer["variants"]:
        sizes = " ".join(f"{enc}={size}" for enc, size in variant.get("size", {}).items())
        checks = " ".join(f"{enc}:{state}" for enc, state in variant.get("checksum", {}).items())
        lines.append(
            f"  {variant.get('status', '?')} age {variant.get('age', '?')}s "
            f"ttl {variant.get('ttl', '?')}s etag {variant.get('etag') or '-'} "
            f"bytes {sizes or '-'} checksum {checks or '-'} purge {variant.get('purge', '-')}"
        )
    return lines
