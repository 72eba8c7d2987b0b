"""The resume journal ``<output>/journal.jsonl``: what an interrupted run already finished.

Line 1 is ``{"type": "start", "fingerprint": {...}}`` (everything that decides the shard
bytes). Each completed shard appends ``{"type": "shard", "shard": {...}, "next_input": k,
"skipped": [...]}`` *after* the shard was renamed into place: ``next_input`` is the position
(in the shuffled input order) where the next shard starts, ``skipped`` the inputs before it
that were not packed. The last line ``{"type": "end", ...}`` closes the run. Each line is
flushed and fsynced; a line cut by a crash is dropped on load.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from xkd.data import format as fmt
from xkd.data.shard_writer import atomic_write_bytes


@dataclass
class JournalState:
    fingerprint: dict
    shards: list[dict] = field(default_factory=list)  # "shard" entries, in order
    end: dict | None = None  # the "end" entry when the run finished

    @property
    def next_input(self) -> int:
        if self.end is not None:
            return int(self.end["next_input"])
        return int(self.shards[-1]["next_input"]) if self.shards else 0


class Journal:
    """Append-only JSON lines with fsync; ``load`` tolerates a torn last line."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / fmt.JOURNAL_NAME

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> JournalState:
        lines = self.path.read_bytes().split(b"\n")
        entries = []
        for line in lines:
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break  # torn write at the crash point: everything after it is void
        if not entries or entries[0].get("type") != "start":
            raise ValueError(f"{self.path}: not a make_shards journal (first line must be a 'start' entry)")
        state = JournalState(fingerprint=entries[0]["fingerprint"])
        for entry in entries[1:]:
            if entry.get("type") == "shard":
                state.shards.append(entry)
            elif entry.get("type") == "end":
                state.end = entry
        return state

    def rewrite(self, state: JournalState) -> None:
        """Replace the journal with ``state`` (used to drop entries whose shard is gone)."""
        entries = [{"type": "start", "fingerprint": state.fingerprint}, *state.shards]
        if state.end is not None:
            entries.append(state.end)
        atomic_write_bytes(self.path, b"".join(_line(entry) for entry in entries))

    def start(self, fingerprint: dict) -> JournalState:
        state = JournalState(fingerprint=fingerprint)
        self.rewrite(state)
        return state

    def append(self, entry: dict) -> None:
        with open(self.path, "ab") as fh:
            fh.write(_line(entry))
            fh.flush()
            os.fsync(fh.fileno())


def _line(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
