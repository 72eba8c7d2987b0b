"""Where evaluation results go: a JSON file per evaluation, and MLflow child runs of the pretraining run.

The JSON file (default ``<run>/eval/<protocol>-<dataset>-<modality>-<role>.json``) holds
everything needed to read the number later: protocol, dataset, modality, encoder role, the
checkpoint and its sha256, per-split metrics and parameters (C, epochs, ...), the mean over
splits. ``xkd.evaluation.report`` reads these files.

MLflow (:func:`xkd.tracking.log_eval_run`): one child run of the pretraining run (the id in
``<run>/mlflow_run_id``, tag ``mlflow.parentRunId``) per split, named
``<protocol>/<dataset>/<split>``, plus one ``<protocol>/<dataset>/mean`` run with the average;
params protocol, dataset, split, modality, encoder, checkpoint hash and the protocol's own
(C / epochs / lr ...); metrics top1/top5 or mAP. The tracking URI is resolved like the
trainer's (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the sqlite store beside the
run directory). A tracking failure is a warning: the JSON file is written first, always.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RESULT_FORMAT = 1


@dataclass
class EvalRecord:
    protocol: str  # linear_svm | fc_tune | finetune | late_fusion
    dataset: str
    modality: str  # video | audio | audio+video
    encoder: str  # teacher | student
    checkpoint: str  # export directory
    checkpoint_sha256: str
    splits: list[dict]  # each: {"split": name, "metrics": {...}, "params": {...}, ...}
    mean: dict[str, float]  # metrics averaged over splits
    params: dict = field(default_factory=dict)  # protocol-wide settings
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())
    mlflow_run_ids: list[str] = field(default_factory=list)
    format: int = RESULT_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def find_run_dir(export_dir: str | Path, levels: int = 4) -> Path | None:
    """The pretraining run directory of an export: the nearest of the export dir and its parents that
    holds ``mlflow_run_id`` (exports default to ``<run>/export/<tag>``)."""
    path = Path(export_dir).resolve()
    for candidate in [path, *path.parents][: levels + 1]:
        if (candidate / "mlflow_run_id").is_file():
            return candidate
    return None


def default_output(record: EvalRecord, run_dir: Path | None, export_dir: str | Path) -> Path:
    base = (run_dir / "eval") if run_dir is not None else Path(export_dir) / "eval"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in record.dataset)
    modality = record.modality.replace("+", "_")
    return base / f"{record.protocol}-{safe}-{modality}-{record.encoder}.json"


def write_json(record: EvalRecord, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _params(record: EvalRecord, split: dict | None) -> dict:
    params = {"protocol": record.protocol, "dataset": record.dataset, "modality": record.modality,
              "encoder": record.encoder, "checkpoint": record.checkpoint, "checkpoint_sha256": record.checkpoint_sha256,
              "split": split["split"] if split else "mean", **record.params}
    if split:
        params.update(split.get("params", {}))
    else:
        params["splits"] = ",".join(s["split"] for s in record.splits)
    return params


def log_to_mlflow(record: EvalRecord, run_dir: Path, tracking_uri: str = "", json_path: Path | None = None) -> list[str]:
    """One child run per split and one for the mean; returns the child run ids (empty on failure)."""
    from xkd.tracking import log_eval_run

    ids = []
    base = f"{record.protocol}/{record.dataset}/{record.modality}/{record.encoder}"
    for split in [*record.splits, None]:
        metrics = split["metrics"] if split else record.mean
        name = f"{base}/{split['split'] if split else 'mean'}"
        artifacts = [json_path] if (split is None and json_path is not None) else []
        child = log_eval_run(run_dir, name, metrics, _params(record, split), artifacts=artifacts,
                             tracking_uri=tracking_uri)
        if child is None:
            return ids
        ids.append(child)
    return ids


def publish(record: EvalRecord, export_dir: str | Path, output: str | Path | None = None,
            run_dir: str | Path | None = None, tracking_uri: str = "", track: bool = True) -> Path:
    """Write the JSON file, then log the MLflow child runs (and record their ids in the JSON)."""
    run = Path(run_dir) if run_dir else find_run_dir(export_dir)
    path = Path(output) if output else default_output(record, run, export_dir)
    write_json(record, path)
    if track:
        if run is None:
            log.warning("%s: no pretraining run directory with mlflow_run_id above the export; results only in %s",
                        export_dir, path)
        else:
            record.mlflow_run_ids = log_to_mlflow(record, run, tracking_uri, json_path=path)
            if record.mlflow_run_ids:
                write_json(record, path)
    log.info("results: %s", path)
    return path


def read_results(paths: list[str | Path]) -> list[EvalRecord]:
    """Every result JSON in the given files and directories (recursively). A path that does not exist
    is an error (a typo, or an unmatched shell glob), not an empty report."""
    records = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory (expected result JSON files or a "
                                    "folder holding them, e.g. <run>/eval)")
        files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                data = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and data.get("format") == RESULT_FORMAT and "protocol" in data:
                records.append(EvalRecord.from_dict(data))
    return records
