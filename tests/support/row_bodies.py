"""Helpers for stores whose small bodies are kept in their index rows: damage such a
body in place (a raw SQLite UPDATE of the pickled row, as a bad sector or a stray
write would leave it) and count the body files a store directory holds."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def index_db(store_dir: str | Path) -> Path:
    """The SQLite file of a store directory's index."""
    return Path(store_dir) / "index" / "cache.db"


def corrupt_row_body(store_dir: str | Path, key: str | None, body: bytes) -> str:
    """Change one byte in the middle of `body` where the row of `key` (None: the one
    row that holds `body`) keeps it, leaving the row's length and everything else as
    it was; the key of the row changed."""
    db = sqlite3.connect(index_db(store_dir), timeout=10)
    try:
        rows = db.execute("SELECT key, value FROM Cache WHERE raw = 1").fetchall()
        found = [
            (name, bytearray(value))
            for name, value in rows
            if (key is None or name == key) and isinstance(value, bytes) and body in value
        ]
        assert len(found) == 1, f"{len(found)} rows keep that body"
        name, value = found[0]
        value[bytes(value).find(body) + len(body) // 2] ^= 0xFF
        with db:
            db.execute("UPDATE Cache SET value = ? WHERE key = ?", (bytes(value), name))
        return str(name)
    finally:
        db.close()


def body_files(store_dir: str | Path) -> list[Path]:
    """Every body file under a store directory's bodies/."""
    root = Path(store_dir) / "bodies"
    return [Path(d) / name for d, _dirs, files in os.walk(root) for name in files]
