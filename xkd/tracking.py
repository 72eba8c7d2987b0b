"""MLflow tracking, rank 0 only, that never stops training.

Default store: ``sqlite:///<run dir's parent>/mlruns.db`` (override with the config's
``tracking.tracking_uri`` or ``MLFLOW_TRACKING_URI``). The run id is kept in
``<run dir>/mlflow_run_id`` so a resumed or requeued job continues the same MLflow run.
If the tracking store is unreachable, training goes on: the failure is reported once,
and logging is retried at the next call (metrics logged after the server is back arrive).
"""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Fail fast instead of MLflow's default minutes of retries when the server is down.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{run_dir.resolve().parent / 'mlruns.db'}"


class Tracker:
    """Thin MLflow wrapper; every method is a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, experiment: str, run_name: str, enabled: bool, tracking_uri: str = "",
                 tags: dict[str, str] | None = None):
        self.enabled = enabled
        self.run_id: str | None = None
        self._warned = False
        if not enabled:
            return
        import mlflow

        self.mlflow = mlflow
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_dir)
        self.run_id_file = run_dir / "mlflow_run_id"
        self.experiment, self.run_name, self.tags = experiment, run_name, tags or {}
        self._guard(self._start)

    def _start(self) -> None:
        from mlflow.tracking import MlflowClient

        self.mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        existing = self.run_id_file.read_text().strip() if self.run_id_file.is_file() else None
        if existing:
            self.run_id = existing
            self.client.update_run(existing, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        self.run_id_file.parent.mkdir(parents=True, exist_ok=True)
        self.run_id_file.write_text(self.run_id)

    def _guard(self, action, *args) -> bool:
        if not self.enabled:
            return False
        try:
            if self.run_id is None and action != self._start:
                self._start()
            action(*args)
            if self._warned:
                log.warning("MLflow tracking at %s is reachable again", self.uri)
                self._warned = False
            return True
        except Exception as error:  # tracking must never stop training
            if not self._warned:
                log.warning("MLflow tracking at %s failed (%s: %s); training continues and logging will be retried",
                            self.uri, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                self._warned = True
            return False

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        def action():
            items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start : start + 100])

        self._guard(action)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        import time

        def action():
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

        self._guard(action)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._guard(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._guard(lambda: [self.client.set_tag(self.run_id, k, v) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self._guard(lambda: self.client.set_terminated(self.run_id, status=status))
