"""`MemoryStore`: the store's seam with every body in memory, for tests.

It runs the same contract suite as `DiskStore` (tests/edge/test_store.py) and lets
the engine be built in-process without a cache directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping

from edge.store.base import StoreBase
from edge.store.interface import BodyRef, NotNow, StoredEntry, StoreError
from edge.store.writer import BodyWriter, unlink_quietly

__all__ = ["MemoryStore"]


class MemoryStore(StoreBase):
    """The same interface with every body in memory, for tests.

    BodyRefs it returns have `data` set and `path` None: readers use `read_body` or
    `data`, never the path. Writers and `tmp_path` still use a private temp directory
    (so `compress.py` works unchanged), whose files are touched on the I/O gateway;
    `add_encoding` reads the file in and removes it.
    """

    def __init__(self, max_bytes: int, tmp_dir: str | None = None) -> None:
        """A store bounded to `max_bytes` of body data.

        Makes its temp directory here, with one blocking mkdir (a test store, built
        before the work it serves; `DiskStore` makes its directories on the gateway).
        """
        directory = tempfile.mkdtemp(prefix="edge-memstore-", dir=tmp_dir)
        super().__init__(max_bytes, directory)
        self._entries: dict[str, StoredEntry] = {}

    def peek(self, key: str) -> StoredEntry | None:
        """The entry; everything here is in memory."""
        entry = self._entries.get(key)
        if entry is not None:
            self._touch(key)
        return entry

    async def get(self, key: str) -> StoredEntry | None:
        """The same as `peek`."""
        return self.peek(key)

    def get_now(self, key: str) -> StoredEntry | NotNow | None:
        """The same as `peek`: everything here is answered now."""
        return self.peek(key)

    async def put_meta(self, key: str, meta: object) -> None:
        """Store a metadata-only record, or replace the meta of an entry keeping its bodies."""
        old = self._entries.get(key)
        self._entries[key] = StoredEntry(key, meta, old.bodies if old is not None else {})
        self._account(key, old.total_size if old is not None else 0)

    def begin(self, key: str, encoding: str = "identity", durable: bool = False) -> BodyWriter:
        """Start writing a body (kept whole in memory, mirrored in a temp file; nothing
        here outlives the process, so `durable` has nothing to do)."""
        if self._closed:
            raise StoreError("store is closed")
        return BodyWriter(self, key, encoding, self.tmp_path("." + encoding), keep_limit=2**62)

    async def _commit_body(
        self, writer: BodyWriter, meta: object, data: bytes | None, whole: bytes | None
    ) -> StoredEntry:
        if whole is None:
            await self._run(unlink_quietly, writer.path)
        body = data or whole or b""
        entry = StoredEntry(
            writer.key, meta, {writer.encoding: BodyRef(writer.encoding, len(body), body, None)}
        )
        self._entries[writer.key] = entry
        self._account(writer.key, len(body))
        self._evict(keep=writer.key)
        return entry

    async def add_encoding(self, key: str, encoding: str, src_path: str) -> BodyRef | None:
        """Read `src_path` in as another encoding of `key` and remove it; None if gone."""
        body = await self._run(_read_and_unlink, src_path)
        return self._add_body(key, encoding, body)

    def _add_body(self, key: str, encoding: str, body: bytes) -> BodyRef | None:
        """`body` as another encoding of `key`; None if gone."""
        old = self._entries.get(key)
        if old is None:
            return None
        ref = BodyRef(encoding, len(body), body, None)
        bodies = {**old.bodies, encoding: ref}
        self._entries[key] = StoredEntry(key, old.meta, bodies)
        self._account(key, sum(r.size for r in bodies.values()))
        self._evict(keep=key)
        return ref

    async def add_encodings(
        self, key: str, paths: Mapping[str, str | bytes], made_from: BodyRef | None = None
    ) -> dict[str, BodyRef] | None:
        """`add_encoding` of each of `paths`; None (and the files removed) if gone, or
        replaced since `made_from` was read."""
        entry = self._entries.get(key)
        if entry is None or (made_from is not None and not _has_body(entry, made_from)):
            for path in paths.values():
                if isinstance(path, str):
                    unlink_quietly(path)
            return None
        added: dict[str, BodyRef] = {}
        for encoding, path in paths.items():
            if key not in self._entries:
                if isinstance(path, str):
                    unlink_quietly(path)
                continue
            if isinstance(path, bytes):
                ref = self._add_body(key, encoding, path)
            else:
                ref = await self.add_encoding(key, encoding, path)
            if ref is not None:
                added[encoding] = ref
        return added if key in self._entries else None

    async def delete(self, key: str) -> None:
        """Remove an entry; no error if absent."""
        self._entries.pop(key, None)
        self._account(key, None)

    async def drop_corrupt(self, key: str, body: BodyRef) -> None:
        """Bodies here never touch disk, so never fail a checksum: drop if still held."""
        entry = self._entries.get(key)
        if entry is not None and body in entry.bodies.values():
            await self.delete(key)
            self._corrupt(key)

    async def scrub(self, key: str, rate: int) -> int:
        """Nothing to re-read: bodies here are only in memory."""
        return 0

    async def keys(self) -> list[str]:
        """All keys."""
        return list(self._entries)

    async def keys_page(self, after: int, limit: int) -> tuple[list[str], int]:
        """Up to `limit` keys after position `after`, and the next position."""
        page = list(self._entries)[after : after + limit]
        return page, after + len(page)

    async def keys_of(self, bases: list[str], separator: str, limit: int) -> list[str]:
        """The keys that are one of `bases` or start with one and `separator`."""
        wanted = set(bases)
        found = [
            key
            for key in self._entries
            if key in wanted or (key.partition(separator)[0] in wanted and separator in key)
        ]
        return found[:limit]

    async def metas(self, keys: list[str]) -> list[tuple[str, object]]:
        """The metadata of `keys` that exist."""
        return [(key, self._entries[key].meta) for key in keys if key in self._entries]

    def _evict(self, keep: str) -> None:
        for key in self._pick_victims(keep):
            self._entries.pop(key, None)

    async def close(self) -> None:
        """Drop everything and remove the temp directory."""
        if self._closed:
            return
        self._closed = True
        self._entries.clear()
        await self._run(shutil.rmtree, self._tmp_dir, True)


def _read_and_unlink(path: str) -> bytes:
    """The bytes of a file, which is then removed (blocking: run on the gateway)."""
    with open(path, "rb") as f:
        body = f.read()
    os.unlink(path)
    return body


def _has_body(entry: StoredEntry, body: BodyRef) -> bool:
    """Whether `entry` still has `body` (the same coding, size and bytes)."""
    held = entry.bodies.get(body.encoding)
    return held is not None and held.size == body.size and held.data == body.data
