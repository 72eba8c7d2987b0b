"""The resume journal ``<output>/journal.jsonl``: what an interrupted run already finished.

Line 1 is ``{"type": "start", "fingerprint": {...}, "work_dir": ".make_shards.work"}``
(everything that decides the shard bytes, and the folder of per-clip temporaries this run
owns, which a rerun may delete). Each completed shard appends ``{"type": "shard", "shard": {...}, "next_input": k,
"skipped": [...]}`` *after* the shard was renamed into place: ``next_input`` is the position
(in the shuffled input order) where the next shard starts, ``skipped`` the inputs before it
that were not packed. The last line ``{"type": "end", ...}`` closes the run. Each line is
flushed and fsynced; a line cut by a crash (only ever the last one) is dropped on load.
Anything else that does not read as such a journal (garbage bytes, other JSON, missing keys)
raises ``JournalError`` naming the line and what was expected.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from xkd.data import format as fmt
from xkd.atomic_files import atomic_write_bytes


@dataclass
class JournalState:
    fingerprint: dict
    shards: list[dict] = field(default_factory=list)  # "shard" entries, in order
    end: dict | None = None  # the "end" entry when the run finished
    # The run's folder of per-clip temporaries in the output; None in journals written before it was recorded.
    work_dir: str | None = None

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
        entries = self._entries()
        if not entries or entries[0][1].get("type") != "start":
            raise JournalError(f"{self.path}: not a make_shards journal (the first line must be a 'start' entry)")
        for line_no, entry in entries:
            _check_entry(entry, f"{self.path} line {line_no}")
        start = entries[0][1]
        state = JournalState(fingerprint=start["fingerprint"], work_dir=start.get("work_dir"))
        for line_no, entry in entries[1:]:
            if entry["type"] == "start" or state.end is not None:
                raise JournalError(f"{self.path} line {line_no}: a {entry['type']!r} entry after the "
                                   f"{'end' if state.end is not None else 'start'} entry")
            if entry["type"] == "shard":
                state.shards.append(entry)
            else:
                state.end = entry
        return state

    def _entries(self) -> list[tuple[int, dict]]:
        """(line number, entry) of every non-blank line, without a torn last line."""
        try:
            data = self.path.read_bytes()
        except OSError as err:
            raise JournalError(f"{self.path}: cannot read it ({err.strerror or err})") from None
        lines = [(n, line) for n, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
        entries = []
        for position, (line_no, line) in enumerate(lines):
            try:
                entry = json.loads(line)
            except ValueError:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
                if position == len(lines) - 1:
                    break  # torn write at the crash point: dropped (the shard it announced is redone)
                raise JournalError(f"{self.path} line {line_no}: not JSON, and a crash only ever tears the "
                                   "last line: the journal is damaged") from None
            if not isinstance(entry, dict):
                raise JournalError(f"{self.path} line {line_no}: a JSON {type(entry).__name__}, "
                                   "expected an object with a 'type'")
            entries.append((line_no, entry))
        return entries

    def rewrite(self, state: JournalState) -> None:
        """Replace the journal with ``state`` (used to drop entries whose shard is gone)."""
        start = {"type": "start", "fingerprint": state.fingerprint}
        if state.work_dir is not None:
            start["work_dir"] = state.work_dir
        entries = [start, *state.shards]
        if state.end is not None:
            entries.append(state.end)
        atomic_write_bytes(self.path, b"".join(_line(entry) for entry in entries))

    def start(self, fingerprint: dict, work_dir: str | None = None) -> JournalState:
        state = JournalState(fingerprint=fingerprint, work_dir=work_dir)
        self.rewrite(state)
        return state

    def append(self, entry: dict) -> None:
        with open(self.path, "ab") as fh:
            fh.write(_line(entry))
            fh.flush()
            os.fsync(fh.fileno())


class JournalError(ValueError):
    """``journal.jsonl`` does not read as this tool's journal (names the line and what was expected)."""


# Keys of each entry type -> the type their value must have.
_ENTRY_KEYS = {
    "start": {"fingerprint": dict},
    "shard": {"shard": dict, "next_input": int, "skipped": list},
    "end": {"next_input": int, "skipped": list},
}
_SHARD_KEYS = {"name": str, "index_file": str, "samples": int, "bytes": int, "sha256": str, "keys_sha256": str}
_SKIP_KEYS = {"source": str, "reason": str, "detail": str}
# Shard and index names are joined to the output folder: plain file names only (no "/", no "..").
_SHARD_FILE = re.compile(r"[A-Za-z0-9_-]+-\d{6}\.(tar|idx)")


def _check_keys(obj: dict, keys: dict[str, type], where: str) -> None:
    for key, kind in keys.items():
        value = obj.get(key)
        # bool is an int subclass: a count of True is as wrong as a count of "1".
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            expected = "a count >= 0" if kind is int else f"a JSON {'object' if kind is dict else kind.__name__}"
            raise JournalError(f"{where}: {key!r} is {repr(value)[:80]}, expected {expected}")


def _check_entry(entry: dict, where: str) -> None:
    """Raise ``JournalError`` unless ``entry`` has the keys and types its type needs."""
    kind = entry.get("type")
    if kind not in _ENTRY_KEYS:
        raise JournalError(f"{where}: entry type {kind!r}, expected one of {sorted(_ENTRY_KEYS)}")
    _check_keys(entry, _ENTRY_KEYS[kind], where)
    if kind == "start" and not isinstance(entry.get("work_dir", ""), str):
        raise JournalError(f"{where}: 'work_dir' is {entry['work_dir']!r}, expected a folder name")
    if kind == "shard":
        _check_keys(entry["shard"], _SHARD_KEYS, f"{where}: shard")
        for name in (entry["shard"]["name"], entry["shard"]["index_file"]):
            if not _SHARD_FILE.fullmatch(name):
                raise JournalError(f"{where}: shard file name {name!r}, expected <split>-NNNNNN.tar / .idx")
    for record in entry.get("skipped", []):
        if not isinstance(record, dict):
            raise JournalError(f"{where}: a skipped record {repr(record)[:80]}, expected an object")
        _check_keys(record, _SKIP_KEYS, f"{where}: skipped record")


def _line(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
