"""Where the clips come from: a folder tree, a Kinetics CSV or an AudioSet CSV -> ``InputItem``s.

* folder (``--input DIR``): every non-hidden file below DIR, recursively; the label is the
  name of the file's parent folder (Kinetics layout ``DIR/<label>/<clip>``); files directly
  in DIR have no label. Hidden and symlinked folders are not entered (a symlinked folder
  could lead back up the tree). A name that is no usable regular file is still an input
  (``path is None``): a dangling symlink (``missing_file``), a symlink loop (``symlink_loop``),
  a fifo, socket or device (``not_media``, never opened: reading a fifo would block).
* Kinetics CSV (``label,youtube_id,time_start,time_end,split``): each row names a file under
  ``--media-root`` through ``--filename-pattern`` (default ``KINETICS_PATTERN``).
* AudioSet CSV (``YTID, start_seconds, end_seconds, positive_labels`` with ``#`` comment
  lines and a quoted comma list of label ids): same, default ``AUDIOSET_PATTERN``.

A CSV row whose file is missing is still an input (``path is None``): it becomes a
``missing_file`` line of ``skipped.jsonl``, so the counts add up. A row whose path could
lead out of the media root (a ``..`` part, e.g. ``youtube_id=../../x`` or a label ``../..``,
or an absolute result) is refused without touching that path: ``outside_media_root``. The
check is on the row's text; symlinks inside the media root are its owner's choice and are
followed.
"""
from __future__ import annotations

import bisect
import csv
import errno
import fnmatch
import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from xkd.data import skip_reasons as sr

KINETICS_PATTERN = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
AUDIOSET_PATTERN = "{ytid}_{start:.3f}.*"
KINETICS_PLACEHOLDERS = ("label", "label_dir", "youtube_id", "time_start", "time_end", "split")
AUDIOSET_PLACEHOLDERS = ("ytid", "start", "end", "start_int", "end_int")
_WILDCARDS = "*?["


@dataclass(frozen=True)
class InputItem:
    """One input clip. ``source``: path relative to the input root (``/``-separated), the
    clip's identity in keys, json and ``skipped.jsonl``. ``path``: the file, or None when there
    is no usable file: then ``reason`` is its ``skipped.jsonl`` reason and ``missing`` the detail
    (what was looked for, or what stands there instead of a file)."""

    source: str
    path: Path | None
    labels: tuple[str, ...] = ()
    missing: str = ""
    reason: str = sr.MISSING_FILE


class InputError(ValueError):
    """An input folder or CSV cannot be used (names the file and what was expected)."""


def scan_folder(root: Path) -> list[InputItem]:
    """Every non-hidden file below ``root``, sorted by relative path; names that are no usable
    regular file are inputs with ``path`` None and their skip reason (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--input {root}: not a directory")
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        # os.walk lists a symlinked folder under dirnames and (followlinks=False) does not enter it.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            label = (path.parent.name,) if path.parent != root else ()
            unusable = _not_a_regular_file(path)
            if unusable is None:
                items.append(InputItem(source=rel, path=path, labels=label))
            else:
                items.append(InputItem(source=rel, path=None, labels=label, reason=unusable[0], missing=unusable[1]))
    return sorted(items, key=lambda item: item.source)


def _not_a_regular_file(path: Path) -> tuple[str, str] | None:
    """(skip reason, detail) when ``path`` (a name os.walk listed as a non-folder) is no regular
    file to read, else None. Symlinks are followed."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        target = f" -> {os.readlink(path)!r}" if path.is_symlink() else ""
        if err.errno == errno.ELOOP:
            return sr.SYMLINK_LOOP, f"{path}{target}: symlink loop, never reaches a file"
        if target:
            return sr.MISSING_FILE, f"{path}{target}: dangling symlink (its target does not exist)"
        return sr.MISSING_FILE, f"{path}: {err.strerror or err}"  # e.g. deleted while scanning
    if not stat.S_ISREG(mode):
        kind = "fifo" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
        return sr.NOT_MEDIA, f"{path}: a {kind}, not a regular file"
    return None


def detect_csv_kind(csv_path: Path) -> str:
    """``"kinetics"`` or ``"audioset"`` from the header / first data line of a CSV."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for line in fh:
            text = line.strip()
            if not text:
                continue
            if text.startswith("#") or text.split(",")[0].strip() == "YTID":
                return "audioset"
            header = [cell.strip() for cell in next(csv.reader([text]))]
            if "youtube_id" in header:
                return "kinetics"
            raise InputError(
                f"--list {csv_path}: first line {text[:80]!r} is neither a Kinetics header "
                "(label,youtube_id,time_start,time_end,split) nor an AudioSet CSV (# comments, "
                "YTID, start_seconds, end_seconds, positive_labels)")
    raise InputError(f"--list {csv_path}: empty CSV")


class _FileResolver:
    """Maps a rendered filename pattern (relative to the media root, maybe with a wildcard
    in its last part) to the first matching file in sorted order. Directory listings are read
    once and searched by the literal prefix, so a 2M-row CSV does not list a folder per row."""

    def __init__(self, media_root: Path):
        self.media_root = Path(media_root)
        self._listings: dict[Path, list[str]] = {}

    def _listing(self, folder: Path) -> list[str]:
        if folder not in self._listings:
            try:
                self._listings[folder] = sorted(os.listdir(folder))
            except (OSError, ValueError):  # ValueError: a NUL byte from the CSV
                self._listings[folder] = []
        return self._listings[folder]

    def resolve(self, rendered: str) -> Path | None:
        folder_part, _, name = rendered.rpartition("/")
        if any(ch in folder_part for ch in _WILDCARDS):
            matches = sorted(glob.glob(str(self.media_root / rendered)))
            return next((Path(m) for m in matches if os.path.isfile(m)), None)
        folder = self.media_root / folder_part if folder_part else self.media_root
        if not any(ch in name for ch in _WILDCARDS):
            path = folder / name
            return path if path.is_file() else None
        prefix = name[: min(name.find(ch) for ch in _WILDCARDS if ch in name)]
        names = self._listing(folder)
        start = bisect.bisect_left(names, prefix)
        for candidate in names[start:]:
            if not candidate.startswith(prefix):
                break
            if fnmatch.fnmatchcase(candidate, name) and (folder / candidate).is_file():
                return folder / candidate
        return None


def _render(pattern: str, fields: dict, csv_path: Path, line_no: int, placeholders: tuple[str, ...]) -> str:
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(
            f"--filename-pattern {pattern!r} on {csv_path} line {line_no}: {err!r}; "
            f"placeholders available: {', '.join(placeholders)}") from None


def leads_outside(rendered: str) -> bool:
    """True when ``rendered`` (a CSV row's path, relative to the media root) is absolute or has a
    ``..`` part. Any ``..`` is refused, not only one that climbs out on paper: after a symlinked
    folder, ``link/../x`` is the link target's sibling, wherever that is. Judged on the text alone."""
    return os.path.isabs(rendered) or ".." in rendered.split("/")


def _item(resolver: _FileResolver, rendered: str, labels: tuple[str, ...], pattern: str) -> InputItem:
    if leads_outside(rendered):
        return InputItem(source=rendered, path=None, labels=labels, reason=sr.OUTSIDE_MEDIA_ROOT,
                         missing=f"{rendered!r} (pattern {pattern!r}) is absolute or climbs with '..': it could "
                                 f"read files outside --media-root {resolver.media_root}; refused")
    path = resolver.resolve(rendered)
    if path is None:
        return InputItem(source=rendered, path=None, labels=labels,
                         missing=f"no file {resolver.media_root / rendered} (pattern {pattern!r})")
    return InputItem(source=path.relative_to(resolver.media_root).as_posix(), path=path, labels=labels)


def _int(text: str, what: str, csv_path: Path, line_no: int) -> int:
    try:
        return int(float(text))
    except ValueError:
        raise InputError(f"{csv_path} line {line_no}: {what} {text!r} is not a number") from None


def read_kinetics_csv(csv_path: Path, media_root: Path, pattern: str = KINETICS_PATTERN) -> list[InputItem]:
    """Rows of a Kinetics CSV (``label`` and ``split`` optional) as inputs, in file order."""
    resolver = _FileResolver(media_root)
    items = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        needed = {"youtube_id", "time_start", "time_end"}
        if not needed <= set(reader.fieldnames or ()):
            raise InputError(f"--list {csv_path}: Kinetics header needs columns {sorted(needed)}, "
                             f"found {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            label = (row.get("label") or "").strip()
            fields = {
                "label": label, "label_dir": label.replace(" ", "_"), "youtube_id": row["youtube_id"].strip(),
                "time_start": _int(row["time_start"], "time_start", csv_path, line_no),
                "time_end": _int(row["time_end"], "time_end", csv_path, line_no),
                "split": (row.get("split") or "").strip(),
            }
            rendered = _render(pattern, fields, csv_path, line_no, KINETICS_PLACEHOLDERS)
            items.append(_item(resolver, rendered, (label,) if label else (), pattern))
    return items


def read_audioset_csv(csv_path: Path, media_root: Path, pattern: str = AUDIOSET_PATTERN) -> list[InputItem]:
    """Rows of an AudioSet segments CSV as inputs; labels are the positive label ids (``/m/09x0r``)."""
    resolver = _FileResolver(media_root)
    items = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#") or text.startswith("YTID"):
                continue
            row = next(csv.reader([text], skipinitialspace=True))
            if len(row) < 4:
                raise InputError(f"{csv_path} line {line_no}: expected YTID, start_seconds, end_seconds, "
                                 f"positive_labels; got {text[:120]!r}")
            ytid = row[0].strip()
            try:
                start, end = float(row[1]), float(row[2])
            except ValueError:
                raise InputError(f"{csv_path} line {line_no}: start/end seconds {row[1]!r}, {row[2]!r} "
                                 "are not numbers") from None
            labels = tuple(label.strip() for label in ",".join(row[3:]).split(",") if label.strip())
            fields = {"ytid": ytid, "start": start, "end": end, "start_int": int(start), "end_int": int(end)}
            if any(ch in pattern for ch in _WILDCARDS):
                fields["ytid"] = glob.escape(ytid)
            rendered = _render(pattern, fields, csv_path, line_no, AUDIOSET_PLACEHOLDERS)
            items.append(_item(resolver, rendered, labels, pattern))
    return items


def read_csv_inputs(csv_path: Path, media_root: Path, pattern: str | None = None) -> tuple[str, list[InputItem]]:
    """(kind, inputs) of a Kinetics or AudioSet CSV; ``pattern`` None: the kind's default."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"--list {csv_path}: no such file")
    if not Path(media_root).is_dir():
        raise InputError(f"--media-root {media_root}: not a directory (needed with --list)")
    kind = detect_csv_kind(csv_path)
    if kind == "kinetics":
        return kind, read_kinetics_csv(csv_path, media_root, pattern or KINETICS_PATTERN)
    return kind, read_audioset_csv(csv_path, media_root, pattern or AUDIOSET_PATTERN)


def label_map(items: list[InputItem]) -> dict[str, int]:
    """Every label of the inputs (packed or not) -> index, in sorted order."""
    return {label: index for index, label in enumerate(sorted({lab for item in items for lab in item.labels}))}
