"""The fleet's status page: `GET /status` (HTML) and `GET /status.json` (its data).

The page is rendered on the server from the same snapshot `/status.json` serves, so
it reads whole without a script; a small script then fetches `/status.json` every
few seconds and redraws the tables in place. No build step, no outside assets.
Neither shows a purge's URLs or any secret: node names, roles, regions, health,
counts and timings only.
"""

from __future__ import annotations

import html
import json
from typing import Any

from aiohttp import web

from purge_api.watch import FleetWatch

__all__ = ["render_page", "status_routes"]

#: How often the page's script asks for new data, in milliseconds.
REFRESH_MS = 2000


def status_routes(watch: FleetWatch) -> list[web.RouteDef]:
    """The routes of the page and its data."""

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=render_page(await watch.snapshot()), content_type="text/html")

    async def data(_request: web.Request) -> web.Response:
        return web.json_response(await watch.snapshot())

    return [web.get("/status", page), web.get("/status.json", data)]


def _cell(value: object) -> str:
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def _node_rows(nodes: list[dict[str, Any]]) -> str:
    rows = []
    for node in nodes:
        ratio = node["hit_ratio"]
        rows.append(
            f'<tr data-node="{html.escape(node["name"])}" class="{html.escape(node["health"])}">'
            + "".join(
                _cell(v)
                for v in (
                    node["name"],
                    node["role"],
                    node["region"],
                    node["health"] + (f" ({node['workers']})" if node["workers"] else ""),
                    node["version"],
                    "-" if ratio is None else f"{ratio * 100:.1f}%",
                    _bytes(node["bytes_served"]),
                    node["purge_lag"],
                )
            )
            + "</tr>"
        )
    return "\n".join(rows)


def _purge_rows(purges: list[dict[str, Any]]) -> str:
    rows = []
    for purge in purges:
        acks = " ".join(
            f"{name}:{'…' if ms is None else f'{ms:g}ms'}" for name, ms in purge["nodes"].items()
        )
        state = (
            f"complete in {purge['propagation_ms']:g} ms" if purge["complete"] else "propagating"
        )
        rows.append(
            f'<tr data-purge="{html.escape(purge["id"])}">'
            + "".join(
                _cell(v)
                for v in (
                    purge["seq"],
                    purge["service"],
                    purge["what"] + (" (soft)" if purge["soft"] else ""),
                    state,
                    acks,
                )
            )
            + "</tr>"
        )
    return "\n".join(rows)


def _geo_rows(geo: dict[str, Any] | None) -> str:
    if geo is None:
        return '<tr><td colspan="2">no GeoDNS in this fleet</td></tr>'
    if not geo["answers_by_region"]:
        return f'<tr><td colspan="2">GeoDNS {html.escape(geo["health"])}: no answers yet</td></tr>'
    return "\n".join(
        f"<tr>{_cell(region)}{_cell(int(count))}</tr>"
        for region, count in geo["answers_by_region"].items()
    )


def render_page(snapshot: dict[str, Any]) -> str:
    """The whole page for one snapshot."""
    minutes = snapshot["window_seconds"] / 60
    return _PAGE.format(
        minutes=f"{minutes:g}",
        nodes=_node_rows(snapshot["nodes"]),
        purges=_purge_rows(snapshot["purges"]),
        geo=_geo_rows(snapshot["geo"]),
        refresh=REFRESH_MS,
        initial=html.escape(json.dumps(snapshot["generated_at"])),
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>edgeshield fleet status</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .3em .8em; text-align: left; }}
th {{ background: #f4f4f4; }}
tr.ok td:nth-child(4) {{ color: #17692e; }}
tr.down td:nth-child(4), tr.degraded td:nth-child(4) {{ color: #b3261e; font-weight: bold; }}
#updated {{ color: #666; }}
</style></head>
<body>
<h1>edgeshield fleet status</h1>
<p id="updated" data-generated="{initial}">rendered by the server; refreshing every
{refresh} ms</p>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>node</th><th>role</th><th>region</th><th>health</th>
<th>version</th><th>hit ratio ({minutes} min)</th><th>bytes served ({minutes} min)</th>
<th>purges behind</th></tr></thead>
<tbody>
{nodes}
</tbody></table>
<h2>Purge propagation (latest first)</h2>
<table id="purges"><thead><tr><th>seq</th><th>service</th><th>what</th><th>state</th>
<th>acknowledged after</th></tr></thead>
<tbody>
{purges}
</tbody></table>
<h2>GeoDNS answers by region ({minutes} min)</h2>
<table id="geo"><thead><tr><th>region</th><th>answers</th></tr></thead>
<tbody>
{geo}
</tbody></table>
<script>
"use strict";
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
const row = (cells, attrs) => "<tr " + (attrs || "") + ">" +
  cells.map((c) => "<td>" + esc(c) + "</td>").join("") + "</tr>";
const size = (n) => {{
  const units = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < 3) {{ n /= 1024; i++; }}
  return i ? n.toFixed(1) + " " + units[i] : n.toFixed(0) + " B";
}};
function draw(s) {{
  document.querySelector("#nodes tbody").innerHTML = s.nodes.map((n) => row([
    n.name, n.role, n.region, n.health + (n.workers ? " (" + n.workers + ")" : ""),
    n.version, n.hit_ratio === null ? "-" : (n.hit_ratio * 100).toFixed(1) + "%",
    size(n.bytes_served), n.purge_lag,
  ], 'data-node="' + esc(n.name) + '" class="' + esc(n.health) + '"')).join("");
  document.querySelector("#purges tbody").innerHTML = s.purges.map((p) => row([
    p.seq, p.service, p.what + (p.soft ? " (soft)" : ""),
    p.complete ? "complete in " + p.propagation_ms + " ms" : "propagating",
    Object.entries(p.nodes).map(([k, v]) => k + ":" + (v === null ? "…" : v + "ms")).join(" "),
  ], 'data-purge="' + esc(p.id) + '"')).join("");
  const geo = s.geo;
  document.querySelector("#geo tbody").innerHTML = !geo
    ? '<tr><td colspan="2">no GeoDNS in this fleet</td></tr>'
    : Object.keys(geo.answers_by_region).length === 0
    ? '<tr><td colspan="2">GeoDNS ' + esc(geo.health) + ": no answers yet</td></tr>"
    : Object.entries(geo.answers_by_region).map(([r, c]) => row([r, Math.round(c)])).join("");
  const updated = document.getElementById("updated");
  updated.dataset.generated = String(s.generated_at);
  updated.textContent = "updated " + new Date(s.generated_at * 1000).toLocaleTimeString();
}}
async function refresh() {{
  try {{
    const answer = await fetch("/status.json", {{ cache: "no-store" }});
    if (answer.ok) draw(await answer.json());
  }} catch (e) {{
    document.getElementById("updated").textContent = "cannot reach the purge API: " + e;
  }}
}}
setInterval(refresh, {refresh});
</script>
</body></html>
"""
