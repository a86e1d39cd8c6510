"""What a service's TLS keys ask of every front: redirect plain HTTP, announce HSTS.

`HttpsPolicy` is built once from the services: `redirect(head)` is the 308 answer a
plain-HTTP request gets when its service sets `https_redirect` (RFC 9110 15.4.9: 308
keeps the method and body, unlike 301), and `hsts(head)` the Strict-Transport-Security
value a TLS answer carries when its service sets `hsts_max_age` (RFC 6797 7.2: the
field is sent over secure transport only, never over plain HTTP). Both are one lookup
by host; a service with neither costs a front nothing more.
"""

from __future__ import annotations

from multidict import CIMultiDict

from edge.forwarding import request_host
from edge.front.types import RequestHead
from edge.outcome import Outcome
from fleet.config import Service

__all__ = ["HTTPS_REDIRECT", "HttpsPolicy"]

#: the Outcome of a request answered with the redirect to https
HTTPS_REDIRECT = Outcome(detail="https-redirect")

#: the longest target copied into a Location (a longer one is redirected to "/")
MAX_REDIRECT_TARGET = 4096


class HttpsPolicy:
    """The services' https_redirect and hsts_max_age, by host."""

    __slots__ = ("_hsts", "_redirect")

    def __init__(self, services: tuple[Service, ...]) -> None:
        self._redirect = frozenset(
            host for service in services if service.https_redirect for host in service.hosts
        )
        self._hsts = {
            host: f"max-age={service.hsts_max_age}"
            for service in services
            if service.hsts_max_age is not None
            for host in service.hosts
        }

    @property
    def active(self) -> bool:
        """Whether any service asks for either."""
        return bool(self._redirect or self._hsts)

    def redirect(self, head: RequestHead) -> tuple[int, CIMultiDict[str], bytes] | None:
        """The 308 to https for a plain-HTTP request of a redirecting service."""
        if head.scheme != "http" or not self._redirect:
            return None
        host = request_host(head)
        if host not in self._redirect:
            return None
        target = head.target
        if not target.startswith("/") or len(target) > MAX_REDIRECT_TARGET:
            target = "/"
        headers = CIMultiDict(
            {
                "Location": f"https://{host}{target}",
                "Content-Type": "text/plain",
                "Cache-Control": "max-age=3600",
            }
        )
        return 308, headers, b"308 use https\n"

    def hsts(self, head: RequestHead) -> str | None:
        """The Strict-Transport-Security value for a TLS answer to `head`, if any."""
        if head.scheme != "https" or not self._hsts:
            return None
        return self._hsts.get(request_host(head))
