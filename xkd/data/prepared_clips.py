"""Clips transcoded ahead of packing, by other machines: the work area of ``make_shards.py --slurm``.

A SLURM job array transcodes; one packing step writes the shards (``xkd/data/slurm_shards.py``).
They meet in ``<output>/.make_shards.slurm/``::

    plan.json                     the build's fingerprint, arguments and task ranges (written first)
    inputs.jsonl                  the inputs in packing order, one JSON object per line
    prepared/<p // 1000>/<p>/     one transcoded clip at position p (9 digits): its media files and,
                                  written last and atomically, result.json (a sample or a skip record)
    progress/task-<t>.json        clips done / skipped by array task t (for --follow)
    slurm/                        submitit's scripts and the per-task logs

A clip counts as prepared only when its ``result.json`` reads and every media file it names has
the recorded size; anything else (a task killed mid-clip, a half-deleted folder) is transcoded
again by the packer. The packer reads results in input order and deletes each clip's folder
after packing it, so the area shrinks as the shards grow.

The area belongs to the journal in the same output folder: it is used (and, at the end,
deleted) only when ``plan.json`` carries the journal's fingerprint.
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from xkd.data import skip_reasons as sr
from xkd.data.inputs import InputItem
from xkd.data.prepare_clip import PreparedSample
from xkd.atomic_files import atomic_write_bytes

AREA_NAME = ".make_shards.slurm"
PLAN_NAME = "plan.json"
INPUTS_NAME = "inputs.jsonl"
RESULT_NAME = "result.json"


class PreparedClips:
    """The work area of one output folder (see the module docstring)."""

    def __init__(self, output: Path):
        self.root = Path(output) / AREA_NAME

    # ---------------------------------------------------------------- plan and inputs

    @property
    def plan_path(self) -> Path:
        return self.root / PLAN_NAME

    def exists(self) -> bool:
        return self.plan_path.is_file()

    def read_plan(self) -> dict:
        try:
            plan = json.loads(self.plan_path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.plan_path}: not a make_shards --slurm plan ({err}); delete "
                             f"{self.root} to start the SLURM preparation again") from None
        if not isinstance(plan, dict) or not isinstance(plan.get("fingerprint"), dict):
            raise ValueError(f"{self.plan_path}: expected a JSON object with a 'fingerprint'; delete {self.root} "
                             "to start the SLURM preparation again")
        return plan

    def write_plan(self, plan: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.plan_path, json.dumps(plan, indent=1, sort_keys=True).encode("utf-8") + b"\n")

    def belongs_to(self, fingerprint: dict) -> bool:
        """The area was planned for this build (same fingerprint as the output's journal)."""
        try:
            return self.exists() and self.read_plan()["fingerprint"] == fingerprint
        except ValueError:
            return False

    def write_inputs(self, ordered: list[InputItem]) -> None:
        lines = (json.dumps({"source": item.source, "path": None if item.path is None else str(item.path),
                             "labels": list(item.labels), "missing": item.missing, "reason": item.reason},
                            sort_keys=True) for item in ordered)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / INPUTS_NAME, "".join(line + "\n" for line in lines).encode("utf-8"))

    def read_inputs(self) -> list[InputItem]:
        items = []
        with open(self.root / INPUTS_NAME, encoding="utf-8") as handle:
            for row in map(json.loads, handle):
                items.append(InputItem(row["source"], None if row["path"] is None else Path(row["path"]),
                                       tuple(row["labels"]), row["missing"], row["reason"]))
        return items

    # ---------------------------------------------------------------- one clip

    def clip_dir(self, position: int) -> Path:
        return self.root / "prepared" / f"{position // 1000:06d}" / f"{position:09d}"

    def save(self, position: int, result: PreparedSample | sr.SkipRecord) -> None:
        """Record a finished clip (its media already lie in ``clip_dir(position)``)."""
        folder = self.clip_dir(position)
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(result, sr.SkipRecord):
            record = {"skip": result.to_json()}
        else:
            media = {name: None if file is None else {"name": file.name, "bytes": file.stat().st_size}
                     for name, file in (("video", result.video_file), ("audio", result.audio_file))}
            record = {"sample": {"key": result.key, "source": result.source, **media,
                                 "meta": base64.b64encode(result.meta).decode("ascii"),
                                 "info": base64.b64encode(result.info).decode("ascii")}}
        atomic_write_bytes(folder / RESULT_NAME, json.dumps(record, sort_keys=True).encode("utf-8"))

    def load(self, position: int, item: InputItem) -> PreparedSample | sr.SkipRecord | None:
        """The prepared result of ``item`` at ``position``, or None when it is not (completely) there."""
        folder = self.clip_dir(position)
        try:
            record = json.loads((folder / RESULT_NAME).read_bytes())
        except (OSError, ValueError):
            return None
        if "skip" in record:
            skip = record["skip"]
            return sr.SkipRecord(skip["source"], skip["reason"], skip["detail"]) if skip["source"] == item.source \
                else None
        sample = record.get("sample") or {}
        if sample.get("source") != item.source:
            return None
        files = {}
        for name in ("video", "audio"):
            entry = sample.get(name)
            if entry is None:
                files[name] = None
                continue
            path = folder / entry["name"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return None
            files[name] = path
        if files["audio"] is None:
            return None
        return PreparedSample(key=sample["key"], source=sample["source"], video_file=files["video"],
                              audio_file=files["audio"], meta=base64.b64decode(sample["meta"]),
                              info=base64.b64decode(sample["info"]), workdir=folder)

    def discard(self, position: int) -> None:
        shutil.rmtree(self.clip_dir(position), ignore_errors=True)

    # ---------------------------------------------------------------- progress and cleanup

    def write_progress(self, task: int, progress: dict) -> None:
        (self.root / "progress").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "progress" / f"task-{task:05d}.json",
                           json.dumps(progress, sort_keys=True).encode("utf-8"))

    def read_progress(self) -> dict[int, dict]:
        out = {}
        for path in sorted((self.root / "progress").glob("task-*.json")):
            try:
                out[int(path.stem.split("-")[1])] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now
        return out

    def remove(self) -> None:
        """Delete the transcoded clips and bookkeeping; the logs (``slurm/``) stay for the record."""
        for name in ("prepared", "progress", INPUTS_NAME, PLAN_NAME):
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
