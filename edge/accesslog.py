"""JSON access log lines, formatted off the request path.

The request path only appends a tuple; a background task turns the batch into JSON
lines a few times a second, so formatting and writing never delay an answer. Lines
are put together from the fields directly (a field that is plain printable ASCII is
quoted as it is, anything else goes through `json.dumps`), several times cheaper than
`json.dumps` of a dict per line, since at 1 KiB hits the log would otherwise cost a
tenth or more of a worker's time; the batches are small, so no flush stalls the loop
for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from typing import TextIO

from edge.outcome import Outcome

FIELDS = (
    "ts",
    "method",
    "host",
    "target",
    "status",
    "cache",
    "bytes",
    "ms",
    "client",
    "proto",
)


class AccessLog:
    """A batched JSON-lines access log for one node."""

    def __init__(
        self, stream: TextIO, node: str, interval: float = 0.1, limit: int = 100_000
    ) -> None:
        self.stream = stream
        self.node = node
        self.interval = interval
        self.limit = limit
        self._pending: list[tuple[object, ...]] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        #: the rendered fields (all but ts and ms) of recent lines, by their values
        self._middles: dict[tuple[object, ...], tuple[str, str]] = {}

    def record(self, fields: tuple[object, ...]) -> None:
        """Queue one request's fields (in FIELDS order); dropped beyond `limit` queued.

        The cache field may be the request's `Outcome` and ms the elapsed seconds: both
        are formatted when the batch is written, off the request path."""
        if len(self._pending) < self.limit:
            self._pending.append(fields)
        else:
            self.dropped += 1

    def flush(self) -> None:
        """Write what is queued."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        prefix = '{"node":' + _json_text(self.node)
        middles = self._middles
        if len(middles) > MIDDLES:
            middles.clear()
        lines = []
        for fields in pending:
            if len(fields) != len(FIELDS):
                lines.append(
                    json.dumps(
                        {"node": self.node, **dict(zip(FIELDS, _formatted(fields), strict=False))},
                        separators=(",", ":"),
                    )
                )
                continue
            ts, method, host, target, status, cache, size, seconds, client, proto = fields
            # the fields a hot object's lines share, rendered once per batch of them
            key = (method, host, target, status, cache, size, client, proto)
            try:
                middle = middles.get(key)
            except TypeError:  # an unhashable value: render it the long way
                lines.append(_line(prefix, fields))
                continue
            if middle is None or type(ts) is not float or type(seconds) is not float:
                if middle is None:
                    middle = middles[key] = _middle(fields)
                if type(ts) is not float or type(seconds) is not float:
                    lines.append(_line(prefix, fields))
                    continue
            lines.append(
                f'{prefix},"ts":{ts!r},{middle[0]}"ms":{round(seconds * 1000, 3)!r},{middle[1]}'
            )
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    def start(self) -> None:
        """Start the periodic flush."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Flush and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()


#: distinct lines' shared fields kept rendered, at most
MIDDLES = 10_000

_CACHE = FIELDS.index("cache")
_MS = FIELDS.index("ms")


def _formatted(fields: tuple[object, ...]) -> tuple[object, ...]:
    """A queued record as written: an Outcome as its Cache-Status member, seconds as ms."""
    out = list(fields)
    cache = out[_CACHE] if len(out) > _CACHE else None
    if isinstance(cache, Outcome):
        out[_CACHE] = cache.member()
    seconds = out[_MS] if len(out) > _MS else None
    if isinstance(seconds, float):
        out[_MS] = round(seconds * 1000, 3)
    return tuple(out)


#: characters a JSON string may hold unescaped, among printable ASCII: all but " and \\
_NOT_PLAIN = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _json_text(text: str) -> str:
    """`text` as a JSON string."""
    if _NOT_PLAIN.search(text) is None:
        return '"' + text + '"'
    return json.dumps(text)


def _json_value(value: object) -> str:
    """One field's value as JSON (what `json.dumps` would write for it)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return _json_text(value)
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)  # what json.dumps writes for them
    if isinstance(value, Outcome):
        return _json_text(value.member())
    return json.dumps(value)


def _line(prefix: str, fields: tuple[object, ...]) -> str:
    """One whole record (in FIELDS order) as a JSON object, keys as `flush` writes them."""
    ts, method, host, target, status, cache, size, seconds, client, proto = fields
    if type(cache) is Outcome:
        cache = cache.member()
    if (
        type(ts) is float
        and type(status) is int
        and type(seconds) is float
        and (size is None or type(size) is int)
        and type(method) is str
        and type(host) is str
        and type(target) is str
        and type(client) is str
        and type(cache) is str
        and type(proto) is str
        and _NOT_PLAIN.search(method + host + target + client + cache + proto) is None
    ):
        # the common line: every text plain, so quoted as it is, numbers as repr
        return (
            f'{prefix},"ts":{ts!r},"method":"{method}","host":"{host}",'
            f'"target":"{target}","status":{status},"cache":"{cache}",'
            f'"bytes":{"null" if size is None else size},"ms":{round(seconds * 1000, 3)!r},'
            f'"client":"{client}","proto":"{proto}"}}'
        )
    ms = round(seconds * 1000, 3) if isinstance(seconds, float) else seconds
    return (
        f'{prefix},"ts":{_json_value(ts)},"method":{_json_value(method)},'
        f'"host":{_json_value(host)},"target":{_json_value(target)},'
        f'"status":{_json_value(status)},"cache":{_json_value(cache)},'
        f'"bytes":{_json_value(size)},"ms":{_json_value(ms)},"client":{_json_value(client)},'
        f'"proto":{_json_value(proto)}}}'
    )


def _middle(fields: tuple[object, ...]) -> tuple[str, str]:
    """The JSON of a record's fields between ts and ms, and after ms (with the closing
    brace), for `flush` to put around the two numbers that change on every line."""
    _, method, host, target, status, cache, size, _, client, proto = fields
    if isinstance(cache, Outcome):
        cache = cache.member()
    return (
        f'"method":{_json_value(method)},"host":{_json_value(host)},'
        f'"target":{_json_value(target)},"status":{_json_value(status)},'
        f'"cache":{_json_value(cache)},"bytes":{_json_value(size)},',
        f'"client":{_json_value(client)},"proto":{_json_value(proto)}}}',
    )
