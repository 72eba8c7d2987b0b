"""MLflow tracking, rank 0 only, that never stops training.

Default store: ``sqlite:///<run dir's parent>/mlruns.db`` with artifacts in ``mlartifacts/``
beside it (override with the config's ``tracking.tracking_uri`` or ``MLFLOW_TRACKING_URI``,
e.g. the server of ``scripts/mlflow_server.sh``). The run id is kept in
``<run dir>/mlflow_run_id`` so a resumed or requeued job continues the same MLflow run.

If the tracking store is unreachable, training goes on: the failure is reported once, further
attempts back off (2 s doubling to 60 s, so an unreachable host costs at most one request
timeout per interval), metrics are buffered meanwhile and sent when the store answers again.

Naming (see :func:`training_run_identity`): one experiment per config family (the config name
without its variant, e.g. ``xkd_ms_k400`` -> ``xkd_k400``), run name
``<variant>-v<video size>-a<audio size>-<dataset>-<config hash>``. Evaluation results become
child runs of the pretraining run (:func:`log_eval_run`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Fail fast instead of MLflow's default minutes of retries when the server is down.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 60.0
MAX_PENDING_METRICS = 200_000  # newest kept; ~30 metrics per log step
BATCH_METRICS = 1000  # MLflow's log_batch limit
VARIANT_TOKENS = ("ms", "mas", "mats")
GENERIC_DATA_DIRS = {"shards", "train", "val", "webdataset", "wds", "data"}


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


def local_artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside the database, not into the working directory."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


# ----------------------------------------------------------------------------- naming


def experiment_family(config_name: str) -> str:
    """The config name without its variant token: xkd_ms_k400 and xkd_mas_k400 -> xkd_k400."""
    parts = [p for p in re.split(r"[_-]", config_name) if p.lower() not in VARIANT_TOKENS]
    return "_".join(parts) or config_name


def dataset_name(data: str) -> str:
    """A short dataset name from a shard directory or pattern: /data/k400/shards/train-{0..9}.tar -> k400."""
    path = Path(str(data).rstrip("/"))
    if any(c in path.name for c in "{*[") or path.suffix == ".tar":
        path = path.parent
    while path.name.lower() in GENERIC_DATA_DIRS and path.parent != path:
        path = path.parent
    return path.name or "data"


def config_hash(resolved: dict[str, Any]) -> str:
    """8 hex digits identifying a resolved config (the same config and data give the same hash)."""
    return hashlib.sha1(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:8]


def training_run_identity(config, data: str, world_size: int) -> tuple[str, str, dict[str, str]]:
    """(experiment, run name, tags) of a pretraining run.

    ``config`` is the resolved :class:`xkd.config.XKDConfig` and ``data`` the shards actually
    read (``--data`` or ``data.shards``).
    """
    m = config.model
    resolved = resolved_config(config, data)
    dataset = dataset_name(data)
    experiment = config.tracking.experiment or experiment_family(config.name)
    name = f"{m.variant}-v{m.video_encoder}-a{m.audio_encoder}-{dataset}-{config_hash(resolved)}"
    commit = git_commit()
    tags = {"variant": m.variant, "video_encoder": m.video_encoder, "audio_encoder": m.audio_encoder,
            "dataset": dataset, "world_size": str(world_size), "config_name": config.name,
            "config_hash": config_hash(resolved), "git_commit": commit, "mlflow.source.git.commit": commit,
            "xkd.kind": "pretrain"}
    hosts = [host for host in os.environ.get("XKD_RANK_HOSTS", "").split(",") if host]  # xkd.distributed
    if hosts:
        tags["num_nodes"] = str(len(set(hosts)))
        tags["hosts"] = ",".join(dict.fromkeys(hosts))  # in rank order
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if slurm_job:
        tags["slurm_job_id"] = slurm_job
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        if array:
            tags["slurm_array"] = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return experiment, name, tags


def resolved_config(config, data: str) -> dict[str, Any]:
    """The config as trained: every default filled in and the shards actually read."""
    resolved = config.to_dict()
    resolved["data"]["shards"] = str(data)
    return resolved


# ----------------------------------------------------------------------------- tracker


def ui_links(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where to look in the MLflow UI: the experiment's training runs, their loss charts side by side
    (the compare view), and the run. MLflow 3's experiment page otherwise opens on its GenAI overview."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    experiment = f"{base}/#/experiments/{experiment_id}"
    text = f"runs {experiment}/runs | loss charts {experiment}/runs?compareRunsMode=CHART"
    if run_id:
        text += f" | this run {experiment}/runs/{run_id}"
    if not uri.startswith(("http://", "https://")):
        text += f" (after: mlflow ui --backend-store-uri {uri})"
    return text


class Tracker:
    """Thin MLflow wrapper; every method is a no-op on ranks other than 0.

    Nothing here raises: a failing store is reported once per outage. Metrics are buffered
    (the newest ``MAX_PENDING_METRICS``) and params, tags and texts are kept, all sent in order
    once the store answers again; pictures of an outage are dropped.
    """

    def __init__(self, run_dir: Path, experiment: str, run_name: str, enabled: bool, tracking_uri: str = "",
                 tags: dict[str, str] | None = None):
        self.enabled = enabled
        self.run_id: str | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._pending: list = []  # metrics not yet sent
        self._deferred: list = []  # params / tags / texts not yet sent
        if not enabled:
            return
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_dir)
        self.run_id_file = run_dir / "mlflow_run_id"
        self.experiment, self.run_name, self.tags = experiment, run_name, tags or {}
        self._guard(lambda: None)

    def _start(self) -> None:
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)
        existing = self.run_id_file.read_text().strip() if self.run_id_file.is_file() else None
        if existing:  # resumed or requeued: continue the same run, with this job's tags
            self.client.update_run(existing, status="RUNNING")
            self.client.log_batch(existing, tags=[RunTag(k, v) for k, v in self.tags.items()])
            self.run_id = existing
            log.info("MLflow (continued): %s", ui_links(self.uri, self.client.get_run(existing).info.experiment_id,
                                                        existing))
            return
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=local_artifact_location(self.uri),
                    tags={"mlflow.experimentKind": "custom_model_development"})  # the UI's training-runs view
            except MlflowException:  # created by a concurrent run meanwhile
                experiment_id = self.client.get_experiment_by_name(self.experiment).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id_file.parent.mkdir(parents=True, exist_ok=True)
        self.run_id_file.write_text(run.info.run_id)
        self.run_id = run.info.run_id
        log.info("MLflow: %s", ui_links(self.uri, experiment_id, self.run_id))

    def _guard(self, action, force: bool = False, keep: bool = False) -> bool:
        """Run ``action`` against the store (after anything deferred); on failure warn once and back off.

        ``keep``: if it cannot run now, defer it to the next successful call.
        ``force``: try even while backing off.
        """
        if not self.enabled:
            return False
        if not force and time.monotonic() < self._retry_at:
            if keep:
                self._deferred.append(action)
            return False
        try:
            if self.run_id is None:
                self._start()
            while self._deferred:
                self._deferred[0]()
                self._deferred.pop(0)
            action()
        except Exception as error:  # tracking must never stop training
            if keep:
                self._deferred.append(action)
            self._failures += 1
            delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + delay
            if self._failures == 1:
                detail = str(error).splitlines()[0] if str(error) else ""
                log.warning("MLflow tracking at %s failed (%s: %s); training continues, metrics are buffered "
                            "and logging will be retried", self.uri, type(error).__name__, detail)
            return False
        if self._failures:
            log.warning("MLflow tracking at %s is reachable again; buffered metrics sent", self.uri)
            self._failures, self._retry_at = 0, 0.0
        return True

    def _flush(self) -> None:
        while self._pending:
            chunk = self._pending[:BATCH_METRICS]
            self.client.log_batch(self.run_id, metrics=chunk)
            del self._pending[: len(chunk)]

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        def action():
            items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start : start + 100])

        self._guard(action, keep=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue the metrics and send everything queued (metrics of an outage arrive afterwards)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        del self._pending[:-MAX_PENDING_METRICS]
        self._guard(self._flush)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._guard(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib figure as an image artifact (e.g. ``visuals/step00000500/video_reconstruction.png``)."""
        self._guard(lambda: self.client.log_figure(self.run_id, figure, artifact_file, save_kwargs={"dpi": 100}))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._guard(lambda: self.client.log_text(self.run_id, text, artifact_file), keep=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._guard(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]),
                    keep=True)

    def finish(self, status: str = "FINISHED") -> None:
        """Send what is still buffered and close the run (tried even while backing off)."""
        def action():
            self._flush()
            self.client.set_terminated(self.run_id, status=status)

        self._guard(action, force=True)


def training_tracker(config, run_dir: Path, data: str, world_size: int, enabled: bool) -> Tracker:
    """The :class:`Tracker` of a pretraining run, named and tagged by :func:`training_run_identity`."""
    experiment, name, tags = training_run_identity(config, data, world_size)
    return Tracker(run_dir, experiment, name, enabled=enabled, tracking_uri=config.tracking.tracking_uri, tags=tags)


# ----------------------------------------------------------------------------- evaluation


def eval_table_markdown(results: dict[str, float]) -> str:
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(results.items()))
    return "| metric | value |\n|---|---|\n" + rows + "\n"


def log_eval_run(run_dir: Path, name: str, results: dict[str, float], params: dict[str, Any] | None = None,
                 artifacts: list[Path] = (), tracking_uri: str = "") -> str | None:
    """Log evaluation scores as a child run of the pretraining run in ``run_dir``.

    The parent is the run recorded in ``<run_dir>/mlflow_run_id``; the child lands in the same
    experiment, named ``<parent name>/<name>``, tagged ``xkd.kind=eval``, with ``results`` as
    metrics (names like ``ucf101/linear_top1``) and the table as ``eval/results.json`` and
    ``eval/results.md``. The table is also attached to the parent as ``eval/<name>.md``.
    Returns the child's run id, or None (with a warning) when the store cannot be reached:
    evaluation results are never lost to a tracking failure, the caller keeps its own files.
    """
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(Path(run_dir))
    id_file = Path(run_dir) / "mlflow_run_id"
    if not id_file.is_file():
        log.warning("%s: no mlflow_run_id (the pretraining run was not tracked); eval results not logged", run_dir)
        return None
    try:
        client = MlflowClient(uri)
        parent = client.get_run(id_file.read_text().strip())
        tags = {"mlflow.parentRunId": parent.info.run_id, "xkd.kind": "eval", "eval_name": name,
                "git_commit": git_commit()}
        for key in ("variant", "video_encoder", "audio_encoder", "dataset", "config_hash"):
            if key in parent.data.tags:
                tags[key] = parent.data.tags[key]
        child = client.create_run(parent.info.experiment_id, run_name=f"{parent.info.run_name}/{name}", tags=tags)
        child_id = child.info.run_id
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        client.log_batch(child_id, metrics=[Metric(k, float(v), now, 0) for k, v in results.items()],
                         params=[Param(k, str(v)[:6000]) for k, v in flatten(params or {}).items()])
        table = eval_table_markdown(results)
        client.log_text(child_id, json.dumps(results, indent=2, sort_keys=True), "eval/results.json")
        client.log_text(child_id, table, "eval/results.md")
        for path in artifacts:
            client.log_artifact(child_id, str(path), "eval")
        client.log_text(parent.info.run_id, table, f"eval/{name}.md")
        client.set_terminated(child_id)
        return child_id
    except Exception as error:
        log.warning("MLflow tracking at %s failed (%s: %s); eval results were not logged", uri,
                    type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return None
