"""The object store: where a node keeps what it caches, as a package of one job per module.

- `interface` — the seam (`ObjectStore`), `StoredEntry`, `BodyRef`, the errors and
  the body checksum;
- `writer` — `BodyWriter`: one body written to a temp file, then committed or aborted;
- `bodies` — `read_body` and `open_body`: stored bodies read and checked;
- `memory_tier` — `MemoryTier`: the bounded LRU that answers hot hits from memory;
- `disk` and `disk_index` — `DiskStore`, the production store (its event-loop half
  and its blocking half: the diskcache index, with bodies up to `ROW_BODY_MAX` kept
  in their rows, and the body files of larger ones);
- `memory` — `MemoryStore`, every body in memory, for tests;
- `io` — the process's one gateway for blocking work, used by the store and by every
  other module of the node that touches disk (fills, compression, purge state).

Everything other modules use is exported here: `from edge.store import X`.
"""

from edge.store import io
from edge.store.bodies import OpenBody, open_body, read_body
from edge.store.disk import DiskStore
from edge.store.disk_index import ROW_BODY_MAX, _Record
from edge.store.interface import (
    NOT_NOW,
    BodyCorrupt,
    BodyGone,
    BodyRef,
    NotNow,
    ObjectStore,
    StoredEntry,
    StoreError,
    body_checksum,
)
from edge.store.memory import MemoryStore
from edge.store.memory_tier import MemoryTier
from edge.store.writer import BodyWriter

__all__ = [
    "NOT_NOW",
    "ROW_BODY_MAX",
    "BodyCorrupt",
    "BodyGone",
    "BodyRef",
    "BodyWriter",
    "DiskStore",
    "MemoryStore",
    "MemoryTier",
    "NotNow",
    "ObjectStore",
    "OpenBody",
    "StoreError",
    "StoredEntry",
    "_Record",
    "body_checksum",
    "io",
    "open_body",
    "read_body",
]
