"""Keys whose body was refused because it decodes past the object size limit.

A decompression bomb is refused when the edge decodes it (to make its variants or
for a client that needs it decoded), and the object is dropped, as a body over the
limit is never stored. Without a memory of that, the next request for the key would
fetch the same bomb again and decode it again up to the limit: seconds of CPU per
request at the default 1 GiB limit, which a client could ask for in a loop. So a
refused key is answered with a 502 at once, without a fetch, for `REFUSAL_SECONDS`
(Varnish's hit-for-pass objects remember an uncacheable answer the same way), or
until a purge covering it is applied.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["MAX_REFUSALS", "REFUSAL_SECONDS", "Refusals"]

#: how long a refused key is answered without a fetch
REFUSAL_SECONDS = 60.0
#: keys remembered at most (the oldest refusal is forgotten first)
MAX_REFUSALS = 10_000


class Refusals:
    """A worker's refused keys: key -> when the refusal was made (node-local time)."""

    def __init__(self, seconds: float = REFUSAL_SECONDS, limit: int = MAX_REFUSALS) -> None:
        self.seconds = seconds
        self.limit = limit
        self._since: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._since)

    def refuse(self, key: str, now: float) -> None:
        """Remember that `key`'s body was refused at `now`."""
        self._since.pop(key, None)
        self._since[key] = now
        while len(self._since) > self.limit:
            self._since.popitem(last=False)

    def refused_at(self, key: str, now: float) -> float | None:
        """When `key` was refused, if that is less than `seconds` ago (else None)."""
        if not self._since:
            return None
        since = self._since.get(key)
        if since is None:
            return None
        if now - since >= self.seconds:
            del self._since[key]
            return None
        return since

    def forget(self, key: str) -> None:
        """Answer `key` normally again (a purge covering it was applied)."""
        self._since.pop(key, None)
