"""JSON access log lines, formatted off the request path.

The request path only appends a tuple; a background task turns the batch into JSON
lines a few times a second, so formatting and writing never delay an answer. Lines
are put together from the fields directly (a field that is plain printable ASCII is
quoted as it is, anything else goes through `json.dumps`), several times cheaper than
`json.dumps` of a dict per line, since at 1 KiB hits the log would otherwise cost a
tenth or more of a worker's time; the batches are small, so no flush stalls the loop
for long.

Each request has an id (`id`): the client's `X-Request-ID` when it is a short token
of safe characters, else one this process makes from a random prefix and a counter.
A request that goes upstream carries it there (`request_id`, called by the fronts
before the engine runs), so an origin can find the line; a hit's id is only logged,
so the hot lane records the client's field as it came and the id is settled here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import re
import sys
from typing import Protocol, TextIO

from multidict import CIMultiDict, CIMultiDictProxy

from edge.outcome import Outcome
from runtime.tasks import cancel_and_wait

log = logging.getLogger("edgeshield.node")

#: the keys of a line after "node", in order
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
    "ua",
    "referer",
    "upstream_ms",
    "id",
)

#: what a front records per request (`AccessLog.record`): FIELDS but upstream_ms, which
#: is read from the Outcome in the cache slot; ms is elapsed seconds there
RECORD = (*FIELDS[:-2], "id")

#: longest User-Agent and Referer written (characters; the rest is cut): the log's
#: size per line stays bounded whatever a client sends
MAX_UA = 256
MAX_REFERER = 512

#: the request id header, sent upstream on misses and passes
REQUEST_ID = "X-Request-ID"
#: a client's X-Request-ID is kept only when it is 1-64 of these characters: enough
#: for UUIDs, ULIDs, W3C trace ids and base64 tokens; nothing that needs escaping in a
#: log line or a header, nothing long
_SAFE_ID = re.compile(r"[A-Za-z0-9._:@+/=-]{1,64}")


class _Ids:
    """Request ids of this process: a random prefix and a counter (no uuid per
    request); a forked child draws a prefix of its own."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        """A new prefix and counter (at start, and in a forked child)."""
        self.prefix = os.urandom(5).hex() + "-"
        self.serial = itertools.count(1).__next__

    def new(self) -> str:
        """A fresh id, unique in this process."""
        return f"{self.prefix}{self.serial():x}"


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.renew)


def is_safe_id(value: str) -> bool:
    """Whether a client's X-Request-ID may be used as the request's id."""
    return _SAFE_ID.fullmatch(value) is not None


def new_request_id() -> str:
    """A request id made by this process."""
    return _ids.new()


def logged_id(value: object) -> str:
    """The id a line carries for a recorded value: the client's when safe, else a new
    one (a hot-lane hit records the client's field as it came)."""
    if type(value) is str and _SAFE_ID.fullmatch(value) is not None:
        return value
    return _ids.new()


def has_safe_id(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> bool:
    """Whether a request carries one X-Request-ID, and a safe one."""
    values = headers.getall(REQUEST_ID, ())
    return len(values) == 1 and _SAFE_ID.fullmatch(values[0]) is not None


def request_id(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> str:
    """The id of a request that goes through the engine, set in its `headers` so the
    next tier gets it: the client's X-Request-ID (the first, if it sent several) when it
    is safe, else a new one in place of whatever the client sent (docs/security.md says
    why). Headers that cannot change (aiohttp's) must carry one safe id already (see
    `has_safe_id`)."""
    if has_safe_id(headers):
        return headers[REQUEST_ID]
    if not isinstance(headers, CIMultiDict):
        raise TypeError("read-only request headers without a safe X-Request-ID")
    # the first field when there are several, as the hot lane logs a hit's id; the
    # next tier gets that one alone
    first = headers.get(REQUEST_ID)
    made = first if first is not None and _SAFE_ID.fullmatch(first) else _ids.new()
    headers[REQUEST_ID] = made
    return made


class LineSink(Protocol):
    """Where the lines go: a text stream (stdout) or an `AppendFile`."""

    def write(self, text: str, /) -> object:
        """Write `text`."""
        ...

    def flush(self) -> None:
        """Push what was written on."""
        ...


class AppendFile:
    """A log file opened for append and written one batch per write(2): with O_APPEND
    each batch lands whole at the end, so the workers of a node share one file without
    mixing their lines; `reopen` (SIGHUP) follows a file that logrotate moved away.

    The write is a page-cache append of a few KiB, made on the event loop as the
    stdout stream's is."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, text: str, /) -> int:
        """Append `text` (one write for all of it, but on a short write)."""
        data = text.encode("utf-8", "surrogateescape")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        return len(data)

    def flush(self) -> None:
        """Nothing: every write has gone to the file."""

    def reopen(self) -> None:
        """Open the path again (a new file if it was moved), then close the old one;
        if it cannot be opened, keep writing to the old one and say why."""
        try:
            fd = self._open()
        except OSError as exc:
            log.error("access log %s: cannot reopen: %s", self.path, exc.strerror or exc)
            return
        old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class AccessLog:
    """A batched JSON-lines access log for one node.

    Lines are written every `interval`, and as soon as `batch` records wait: writing
    a batch holds the event loop (about 1.7 µs a line), so under load a batch of a
    whole interval would be a pause of several milliseconds in every client's answer,
    the tail of the latency; a bounded batch keeps that pause under half a
    millisecond."""

    def __init__(
        self,
        stream: TextIO | LineSink,
        node: str,
        interval: float = 0.1,
        limit: int = 100_000,
        batch: int = 256,
    ) -> None:
        self.stream = stream
        self.node = node
        self.interval = interval
        self.limit = limit
        self.batch = batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[object, ...]] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        #: the rendered fields (all but ts, ms and id) of recent lines, by their values
        self._middles: dict[tuple[object, ...], tuple[str, str]] = {}

    def record(self, fields: tuple[object, ...]) -> None:
        """Queue one request's fields (in RECORD order); dropped beyond `limit` queued.

        The cache field may be the request's `Outcome` and ms the elapsed seconds, ua
        and referer the client's fields as sent, id the id or the client's field as
        sent: all are formatted (bounded, checked) when the batch is written, off the
        request path."""
        pending = self._pending
        if len(pending) < self.limit:
            pending.append(fields)
            if len(pending) == self.batch and self._loop is not None:
                # written once the answers in hand have gone, not in this one's path
                self._loop.call_soon(self.flush)
        else:
            self.dropped += 1

    def reopen(self) -> None:
        """SIGHUP: write what is queued, then reopen a log file (for logrotate)."""
        self.flush()
        reopen = getattr(self.stream, "reopen", None)
        if reopen is not None:
            reopen()

    def flush(self) -> None:
        """Write what is queued."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        prefix = '{"node":' + _json_text(self.node)
        middles = self._middles
        if len(middles) > MIDDLES:
            middles.clear()
        id_prefix, id_serial = _ids.prefix, _ids.serial
        safe_id = _SAFE_ID.fullmatch
        lines = []
        for fields in pending:
            if len(fields) != len(RECORD):
                lines.append(
                    json.dumps(
                        {"node": self.node, **dict(zip(FIELDS, _formatted(fields), strict=False))},
                        separators=(",", ":"),
                    )
                )
                continue
            ts, method, host, target, status, cache, size, seconds, client, proto, ua, ref, rid = (
                fields
            )
            if type(rid) is not str or safe_id(rid) is None:
                rid = f"{id_prefix}{id_serial():x}"  # what _Ids.new makes, inlined
            if type(cache) is Outcome and cache.upstream_seconds is not None:
                # went upstream: its upstream_ms makes the line's fields its own, so
                # keeping them rendered would only churn the memo
                middle = _middle(fields)
            else:
                # the fields a hot object's lines share, rendered once per batch of them
                key = (method, host, target, status, cache, size, client, proto, ua, ref)
                try:
                    kept = middles.get(key)
                except TypeError:  # an unhashable value: render it the long way
                    lines.append(_line(prefix, fields, rid))
                    continue
                if kept is None:
                    kept = middles[key] = _middle(fields)
                middle = kept
            if type(ts) is not float or type(seconds) is not float:
                lines.append(_line(prefix, fields, rid))
                continue
            # a safe id is plain text: quoted as it is
            lines.append(
                f'{prefix},"ts":{ts!r},{middle[0]}"ms":{round(seconds * 1000, 3)!r},'
                f'{middle[1]}{rid}"}}'
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
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        """Flush and stop."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        self.flush()
        if isinstance(self.stream, AppendFile):
            self.stream.close()


#: the variable that turns the access log off whatever fleet.toml says ("0")
SWITCH = "EDGESHIELD_ACCESS_LOG"


def open_access_log(setting: str, node: str) -> AccessLog | None:
    """A node's access log as its `access_log` setting says ("stdout", "off" or a file
    path), or None when it is off (`EDGESHIELD_ACCESS_LOG=0` turns it off too).

    A file that cannot be opened stops the node with one line naming it."""
    if os.environ.get(SWITCH, "1") == "0" or setting == "off":
        return None
    if setting == "stdout":
        return AccessLog(sys.stdout, node)
    try:
        return AccessLog(AppendFile(setting), node)
    except OSError as exc:
        raise SystemExit(
            f"edgeshield: node {node}: access_log {setting!r} cannot be opened: "
            f"{exc.strerror or exc}"
        ) from None


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


def _line(prefix: str, fields: tuple[object, ...], rid: str) -> str:
    """One whole record (in RECORD order, its id settled as `rid`) as a JSON object,
    keys as `flush` writes them: for the rare record whose values are not the usual
    types."""
    middle = _middle(fields)
    ts, seconds = fields[0], fields[7]
    ms = round(seconds * 1000, 3) if type(seconds) is float else seconds
    return f'{prefix},"ts":{_json_value(ts)},{middle[0]}"ms":{_json_value(ms)},{middle[1]}{rid}"}}'


def _bounded(value: object, limit: int) -> object:
    """A client's field cut to `limit` characters."""
    return value[:limit] if isinstance(value, str) and len(value) > limit else value


def _middle(fields: tuple[object, ...]) -> tuple[str, str]:
    """The JSON of a record's fields between ts and ms, and after ms up to the id's
    opening quote, for `flush` to put around the values that change on every line
    (upstream_ms is the Outcome's, which is part of the key these are kept under)."""
    _, method, host, target, status, cache, size, _, client, proto, ua, referer, _ = fields
    upstream = None
    if isinstance(cache, Outcome):
        if cache.upstream_seconds is not None:
            upstream = round(cache.upstream_seconds * 1000, 3)
        cache = cache.member()
    if type(ua) is str and len(ua) > MAX_UA:
        ua = ua[:MAX_UA]
    if type(referer) is str and len(referer) > MAX_REFERER:
        referer = referer[:MAX_REFERER]
    # the usual line: texts (or null) that all need no escaping, whole numbers, and
    # a finite upstream_ms; one scan of the texts together instead of one per field
    if (
        type(method) is str
        and type(target) is str
        and type(cache) is str
        and type(proto) is str
        and type(status) is int
        and (host is None or type(host) is str)
        and (client is None or type(client) is str)
        and (ua is None or type(ua) is str)
        and (referer is None or type(referer) is str)
        and (size is None or type(size) is int)
        and (upstream is None or math.isfinite(upstream))
        and _NOT_PLAIN.search(
            f"{method}{host or ''}{target}{cache}{client or ''}{proto}{ua or ''}{referer or ''}"
        )
        is None
    ):
        return (
            f'"method":"{method}","host":{"null" if host is None else f"{chr(34)}{host}{chr(34)}"},'
            f'"target":"{target}","status":{status!r},"cache":"{cache}",'
            f'"bytes":{"null" if size is None else repr(size)},',
            f'"client":{"null" if client is None else f"{chr(34)}{client}{chr(34)}"},'
            f'"proto":"{proto}",'
            f'"ua":{"null" if ua is None else f"{chr(34)}{ua}{chr(34)}"},'
            f'"referer":{"null" if referer is None else f"{chr(34)}{referer}{chr(34)}"},'
            f'"upstream_ms":{"null" if upstream is None else repr(upstream)},"id":"',
        )
    return (
        f'"method":{_json_value(method)},"host":{_json_value(host)},'
        f'"target":{_json_value(target)},"status":{_json_value(status)},'
        f'"cache":{_json_value(cache)},"bytes":{_json_value(size)},',
        f'"client":{_json_value(client)},"proto":{_json_value(proto)},'
        f'"ua":{_json_value(_bounded(ua, MAX_UA))},'
        f'"referer":{_json_value(_bounded(referer, MAX_REFERER))},'
        f'"upstream_ms":{_json_value(upstream)},"id":"',
    )
