"""The route endpoint over HTTP: the same choice as GeoDNS, with its reasoning, as JSON.

`GET /v1/route?ip=ADDR[&family=4|6]` answers what a DNS query from ADDR would get,
for debugging and for steering by HTTP redirect; `GET /v1/edges` shows each edge's
last health check.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web

from geo.choice import Choice
from geo.health import HealthMonitor
from geo.routing import Router

__all__ = ["choice_to_json", "make_app"]

ROUTER_KEY = web.AppKey("router", Router)
HEALTH_KEY = web.AppKey("health", HealthMonitor)


def choice_to_json(choice: Choice) -> dict[str, Any]:
    """A Choice as a JSON-ready dict."""
    location = choice.location
    return {
        "client_network": str(choice.client_network),
        "basis": choice.basis,
        "region": choice.region or None,
        "location": None
        if location is None
        else {
            "latitude": location.latitude,
            "longitude": location.longitude,
            "country": location.country or None,
            "city": location.city or None,
        },
        "deciding_network": str(choice.deciding_network) if choice.deciding_network else None,
        "edges": [
            {
                "name": r.site.name,
                "region": r.site.region,
                "address": r.site.address,
                "distance_km": round(r.distance_km, 1),
            }
            for r in choice.edges
        ],
        "edge": choice.edges[0].site.name if choice.edges else None,
        "tied": list(choice.tied),
        "all_down": choice.all_down,
        "reason": choice.reason,
    }


async def _route(request: web.Request) -> web.Response:
    text = request.query.get("ip", "")
    if not text:
        return web.json_response({"error": "the query parameter 'ip' is required"}, status=400)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return web.json_response({"error": f"'ip': {text!r} is not an IP address"}, status=400)
    family_text = request.query.get("family", "")
    if family_text not in ("", "4", "6"):
        return web.json_response({"error": "'family' must be 4 or 6"}, status=400)
    family = int(family_text) if family_text else None
    choice = request.app[ROUTER_KEY].route(ipaddress.ip_network(address), family)
    return web.json_response({"ip": str(address), **choice_to_json(choice)})


async def _edges(request: web.Request) -> web.Response:
    health = request.app[HEALTH_KEY]
    return web.json_response(
        {
            name: {"healthy": state.healthy, "detail": state.detail, "checked": state.checked}
            for name, state in health.states.items()
        }
    )


def make_app(router: Router, health: HealthMonitor) -> web.Application:
    """The aiohttp application of the route endpoint."""
    app = web.Application()
    app[ROUTER_KEY] = router
    app[HEALTH_KEY] = health
    app.router.add_get("/v1/route", _route)
    app.router.add_get("/v1/edges", _edges)
    return app
