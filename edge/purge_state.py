"""A node's purge state on disk: the applied rules and the applied sequence number.

Kept apart from the intake (`edge.purge_sync`), which decides what to apply; this
module only makes it durable, so a restarted node keeps its rules exactly as they
were and pulls only what it missed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from edge.cache.purge import PurgeRecord

__all__ = ["PurgeStateFile"]


class PurgeStateFile:
    """The node's purge state on disk: applied rules (JSON lines) and applied_seq.

    `purge-rules.jsonl` gets one line per applied purge, `{"record", "applied_at"}`,
    appended and fsynced before the node acknowledges; `purge-applied.json` holds
    `{"applied_seq": N}` and is replaced atomically after the rules are on disk, so
    a crash between the two leaves rules that are replayed, never a seq without its
    rules. Blocking: the caller runs these methods on the I/O gateway (`edge.store.io`).
    """

    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir)
        self.rules_path = self.dir / "purge-rules.jsonl"
        self.seq_path = self.dir / "purge-applied.json"

    def load(self) -> tuple[int, list[tuple[PurgeRecord, float]]]:
        """(applied_seq, [(record, applied_at), ...]) as saved; (0, []) on a fresh node."""
        applied_seq = 0
        with contextlib.suppress(FileNotFoundError):
            data = json.loads(self.seq_path.read_text(encoding="utf-8"))
            applied_seq = int(data["applied_seq"])
        entries: list[tuple[PurgeRecord, float]] = []
        try:
            raw = self.rules_path.read_bytes()
        except FileNotFoundError:
            raw = b""
        if raw and not raw.endswith(b"\n"):
            # a crash in the middle of an append left a line cut short: cut it off, or
            # the next append would run on from it and that line would be lost too
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(self.rules_path, "r+b") as handle:
                handle.truncate(len(raw))
                handle.flush()
                os.fsync(handle.fileno())
        lines = raw.decode("utf-8", errors="replace").splitlines()
        for line in lines:
            try:
                item = json.loads(line)
                entries.append((PurgeRecord.from_json(item["record"]), float(item["applied_at"])))
            except (ValueError, KeyError, TypeError):
                # a line cut short by a crash: its purge was never acknowledged, and
                # the catch-up pull brings it back
                continue
        return applied_seq, entries

    def append(self, entries: list[tuple[PurgeRecord, float]], applied_seq: int) -> None:
        """Add applied rules, durably, then record the new applied_seq."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if entries:
            text = "".join(
                json.dumps({"record": r.to_json(), "applied_at": at}, separators=(",", ":")) + "\n"
                for r, at in entries
            )
            with open(self.rules_path, "a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        self._replace(self.seq_path, json.dumps({"applied_seq": applied_seq}))

    def rewrite(self, entries: list[tuple[PurgeRecord, float]]) -> None:
        """Replace the rules file with `entries` (after old rules expired)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        text = "".join(
            json.dumps({"record": r.to_json(), "applied_at": at}, separators=(",", ":")) + "\n"
            for r, at in entries
        )
        self._replace(self.rules_path, text)

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
