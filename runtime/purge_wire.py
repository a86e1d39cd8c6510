"""The one wire schema of a purge: what the API logs, pushes and serves, and what nodes take.

A purge has two parts. `PurgeRequest` is what a purge call asks for (urls, prefixes,
tags, all, soft): the purge API checks a client's body into one, keeps it in its log
and shows it in a purge's status. `PurgeRecord` is an accepted purge as the log holds
it and as nodes receive it (pushed or pulled): the request with the log's sequence
number, id, service and acceptance time. Both sides import this module, so the API's
push and a node's intake cannot drift apart.

It lives in `runtime` because both roles need it and neither may import the other:
`fleet` holds configuration only, and this is a message, not configuration. It is
pure data (no I/O, nothing of ours imported), so the I/O-free policy in `edge.cache`
may import it too. The wire form is documented in docs/purge-api.md ("Node protocol").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PurgeRecord", "PurgeRequest"]


def _strings(data: Mapping[str, object], name: str, where: str) -> tuple[str, ...]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {name!r} must be a list of strings")
    return tuple(value)


def _flag(data: Mapping[str, object], name: str, where: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {name!r} must be true or false")
    return value


@dataclass(frozen=True)
class PurgeRequest:
    """What one purge asks for: the objects it covers, and whether it only marks stale."""

    urls: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    all: bool = False
    soft: bool = False

    @property
    def item_count(self) -> int:
        """URLs, prefixes and tags together (what the API's max_items limits)."""
        return len(self.urls) + len(self.prefixes) + len(self.tags)

    def to_json(self) -> dict[str, object]:
        """The request as a JSON-ready dict (the log's and the status's form)."""
        return {
            "urls": list(self.urls),
            "prefixes": list(self.prefixes),
            "tags": list(self.tags),
            "all": self.all,
            "soft": self.soft,
        }

    @classmethod
    def from_json(cls, data: object, where: str = "purge request") -> PurgeRequest:
        """A request from its JSON form, types checked; ValueError names the field.

        Only the shape is checked here; what a client may ask (hosts of the service,
        lengths, item counts) is the API's business (`purge_api.body`).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object")
        return cls(
            urls=_strings(data, "urls", where),
            prefixes=_strings(data, "prefixes", where),
            tags=_strings(data, "tags", where),
            all=_flag(data, "all", where),
            soft=_flag(data, "soft", where),
        )


@dataclass(frozen=True)
class PurgeRecord:
    """One accepted purge, as the API's log holds it and as nodes receive it.

    Flat on the wire (`{"seq", "id", "service", "urls", "prefixes", "tags", "all",
    "soft", "accepted_at"}`); `request` gives back the part the client asked for.
    """

    seq: int
    id: str
    service: str
    urls: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    all: bool = False
    soft: bool = False
    accepted_at: float = 0.0

    @classmethod
    def of(
        cls, seq: int, purge_id: str, service: str, request: PurgeRequest, accepted_at: float
    ) -> PurgeRecord:
        """The record of an accepted `request`."""
        return cls(
            seq=seq,
            id=purge_id,
            service=service,
            urls=request.urls,
            prefixes=request.prefixes,
            tags=request.tags,
            all=request.all,
            soft=request.soft,
            accepted_at=accepted_at,
        )

    @property
    def request(self) -> PurgeRequest:
        """What the purge asks for, without the log's numbering."""
        return PurgeRequest(self.urls, self.prefixes, self.tags, self.all, self.soft)

    def to_json(self) -> dict[str, object]:
        """The record as a JSON-ready dict (the wire and the node's state file form)."""
        return {"seq": self.seq, "id": self.id, "service": self.service} | (
            self.request.to_json() | {"accepted_at": self.accepted_at}
        )

    @classmethod
    def from_json(cls, data: object) -> PurgeRecord:
        """A record from its JSON form; ValueError names the field that is wrong."""
        where = "purge record"
        request = PurgeRequest.from_json(data, where)
        assert isinstance(data, Mapping)
        seq = data.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError(f"{where}: 'seq' must be a non-negative integer")
        for name in ("id", "service"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"{where}: {name!r} must be a string")
        accepted_at = data.get("accepted_at", 0.0)
        if not isinstance(accepted_at, int | float) or isinstance(accepted_at, bool):
            raise ValueError(f"{where}: 'accepted_at' must be a number")
        return cls.of(seq, str(data["id"]), str(data["service"]), request, float(accepted_at))
