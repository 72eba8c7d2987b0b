"""Experiment tracking as people use it: a real MLflow server, real runs, the real UI in a browser.

* ``scripts/mlflow_server.sh`` starts the server (SQLite + artifact store), two tiny pretraining
  runs (variants ms and mas, 2 ranks) and an evaluation child run log to it, and headless
  Debian chromium (driven by playwright-core) shows both runs on the experiment page and their
  loss curves in the compare (chart) view. Screenshots, the UI report and the logged pictures
  are kept in ``$TMPDIR/xkd-test-artifacts/tracking_ui/`` (or ``$XKD_TEST_ARTIFACTS/tracking_ui/``).
* Killing the server mid-training does not stop training; the metrics of the outage and those
  logged after the server is back arrive.

Browser dependencies are installed by ``scripts/install_ui_test_deps.sh`` (apt chromium, npm
playwright-core), called by a session fixture.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from media import child_pids
from xkd.tracking import git_commit

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVER = ROOT / "scripts" / "mlflow_server.sh"
# Outside the checkout; kept after the run so the screenshots can be looked at.
ARTIFACTS = Path(os.environ.get("XKD_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "xkd-test-artifacts") / "tracking_ui"
VISUALS = ("video_reconstruction", "audio_reconstruction", "refine_attention")
PROBE_METRIC = "probe/sounds/audio/teacher/knn_top1"
WAIT = 300  # seconds: a bound on waiting for something to happen, not a speed requirement


def wait_until(condition, what: str, timeout: float = WAIT):
    """Poll ``condition`` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server(command: str, state: Path, port: int) -> str:
    result = subprocess.run(["bash", str(SERVER), command], env=dict(os.environ, XKD_MLFLOW_DIR=str(state),
                            XKD_MLFLOW_PORT=str(port)), capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0 or command == "status", result.stdout + result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """Debian chromium and playwright-core, installed once (quick when already there)."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install_ui_test_deps.sh")], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server on a free port: (url, state dir, port). Stopped at the end."""
    state, port = tmp_path_factory.mktemp("mlflow-server"), free_port()
    url = server("start", state, port)
    assert url == f"http://127.0.0.1:{port}"
    assert server("start", state, port) == url  # idempotent: the running server is reused
    assert server("status", state, port).startswith(f"running {url}")
    yield url, state, port
    server("stop", state, port)
    assert server("status", state, port) == "stopped"


def torchrun(port: int, *args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port),
            str(ROOT / "launch" / "pretrain.py"), *args]


def train_env(url: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", LOCAL_SIZE="2", PYTHONUNBUFFERED="1", MLFLOW_TRACKING_URI=url)


def steps_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_reconstruction_pictures(tiny_config, random_batch):
    """The pictures' inputs: masks cover the configured share of each view, the reconstruction has
    the view's shape, and every figure draws (what the trainer logs every visualize_every_steps)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from xkd import visualize
    from xkd.models import XKD

    config = tiny_config()
    model = XKD(config)
    batch = random_batch(config)
    recon = model.student.reconstruct(batch)
    for name, ratio in (("video", config.model.video_mask_ratio), ("audio", config.model.audio_mask_ratio)):
        rec = recon[name]
        assert rec.prediction.shape == rec.mask.shape == rec.original.shape == batch[f"{name}_global"].shape
        assert set(rec.mask.unique().tolist()) == {0.0, 1.0}
        assert float(rec.mask.mean()) == pytest.approx(ratio, abs=0.05)
    targets = model.teacher(batch["video_global"], batch["audio_global"], 0.1, 0.1)
    grid = model.teacher.video_encoder.patch_embed.grid(batch["video_global"].shape)
    figures = [visualize.video_reconstruction_figure(recon["video"]),
               visualize.audio_reconstruction_figure(recon["audio"]),
               visualize.refine_attention_figure(batch["video_global"], targets.video_weights, grid)]
    for figure in figures:
        FigureCanvasAgg(figure).draw()
        assert figure.get_suptitle()
    heat = visualize.attention_volume(targets.video_weights[0], grid, tuple(batch["video_global"].shape[2:]))
    assert heat.shape == batch["video_global"].shape[2:]


@pytest.mark.slow
def test_tracker_outage_defers_and_buffers(tmp_path, caplog):
    """A store that cannot be opened at first (a file stands where its directory belongs): nothing
    raises, one warning; once it opens, the params, the config text and every metric arrive in order."""
    from xkd.tracking import Tracker

    store = tmp_path / "later"
    store.write_text("not a directory")
    tracker = Tracker(tmp_path / "run", "outage", "run-a", enabled=True, tracking_uri=f"sqlite:///{store}/mlruns.db")
    tracker.log_params({"model": {"variant": "ms"}})
    tracker.log_text("model: {variant: ms}\n", "config/resolved_config.yaml")
    for step in (1, 2, 3):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    assert tracker.run_id is None
    assert sum("training continues" in r.getMessage() for r in caplog.records) == 1

    store.unlink()
    store.mkdir()
    tracker.finish()  # tried despite the backoff: creates the run, sends everything
    client = MlflowClient(f"sqlite:///{store}/mlruns.db")
    run = client.get_run((tmp_path / "run" / "mlflow_run_id").read_text())
    assert run.info.status == "FINISHED" and run.data.params == {"model.variant": "ms"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
        (1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "config")] == ["config/resolved_config.yaml"]
    assert any("reachable again" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_runs_eval_and_ui(mlflow_server, sample_shards, sound_shards, node_modules, tmp_path):
    url, _, _ = mlflow_server
    client = MlflowClient(url)
    runs = {}
    # The ms run probes the bundled sounds every 3 steps (and at step 0); mas has the probe off.
    probe = {"ms": [f"probe.sets=[{{name: sounds, data: '{sound_shards}', modality: audio, "
                    f"splits: 'esc50:{ROOT / 'data' / 'sounds' / 'folds.csv'}'}}]", "probe.every_steps=3"],
             "mas": ["probe.every_steps=0"]}
    for variant, zero in (("ms", 2), ("mas", 3)):  # ZeRO-3: the pictures' forward gathers parameters
        run_dir = tmp_path / variant
        result = subprocess.run(torchrun(free_port(), "--ds_config", str(ROOT / f"ds_configs/zero{zero}.json"),
                                         "--data", str(sample_shards), "--output", str(run_dir),
                                         "--max-steps", "6", f"model.variant={variant}",
                                         "train.visualize_every_steps=3", *probe[variant]),
                                cwd=ROOT, env=train_env(url), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[variant] = client.get_run((run_dir / "mlflow_run_id").read_text())

    # Grouping, naming, tags, curves and artifacts, as stored by the server.
    (experiment_id,) = {run.info.experiment_id for run in runs.values()}
    assert client.get_experiment(experiment_id).name == "tiny"  # the config family (variant-free name)
    for variant, run in runs.items():
        assert re.fullmatch(rf"{variant}-vtiny-atiny-sample_shards-[0-9a-f]{{8}}", run.info.run_name)
        tags = run.data.tags
        assert (tags["variant"], tags["dataset"], tags["world_size"]) == (variant, "sample_shards", "2")
        assert tags["git_commit"] == git_commit() and tags["config_hash"] in run.info.run_name
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
        knn = [m.step for m in client.get_metric_history(run.info.run_id, PROBE_METRIC)]
        assert knn == ([0, 3, 6] if variant == "ms" else [])  # the step-0 baseline, then every 3 steps, once each
        files = {a.path for folder in ("config", "visuals/step00000003", "visuals/step00000006")
                 for a in client.list_artifacts(run.info.run_id, folder)}
        assert "config/resolved_config.yaml" in files
        assert {f"visuals/step00000006/{name}.png" for name in VISUALS} <= files
        resolved = Path(client.download_artifacts(run.info.run_id, "config/resolved_config.yaml", str(tmp_path)))
        assert f"variant: {variant}" in resolved.read_text()
        assert str(sample_shards) in resolved.read_text()
    pictures = ARTIFACTS / "logged_visuals"
    pictures.mkdir(parents=True, exist_ok=True)
    for name in VISUALS:
        png = Path(client.download_artifacts(runs["ms"].info.run_id, f"visuals/step00000006/{name}.png",
                                             str(tmp_path)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shutil.copy(png, pictures / f"ms_step6_{name}.png")

    # One real evaluation against the server: export the ms run's encoders and run eval/'s linear
    # SVM on the bundled labelled sound set; the results arrive as child runs of the ms run.
    export_result = subprocess.run([sys.executable, str(ROOT / "launch" / "export_encoders.py"), str(tmp_path / "ms")],
                                   cwd=ROOT, env=train_env(url), capture_output=True, text=True, timeout=600)
    assert export_result.returncode == 0, export_result.stderr[-3000:]
    eval_json = tmp_path / "eval_linear_svm.json"
    result = subprocess.run([sys.executable, str(ROOT / "eval" / "linear_svm.py"), "--checkpoint",
                             str(tmp_path / "ms" / "export" / "step00000006"), "--modality", "audio", "--data",
                             str(sound_shards), "--splits", f"esc50:{ROOT / 'data' / 'sounds' / 'folds.csv'}",
                             "--dataset-name", "sounds", "--workers", "0", "--jobs", "2", "--no-progress",
                             "--output", str(eval_json)],
                            cwd=ROOT, env=train_env(url), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(eval_json.read_text())
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{runs['ms'].info.run_id}'")
    (child,) = [c for c in children if c.info.run_name.endswith("/mean")]
    results = child.data.metrics
    assert results == pytest.approx(record["mean"]) and set(results) >= {"top1", "top5"}
    assert len(children) == len(record["splits"]) + 1  # one child per fold, one for the mean
    child_id = child.info.run_id

    # The terminal comparison (and its CSV).
    csv_path = tmp_path / "compare.csv"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), "--tracking-uri", url,
                             "--experiment", "tiny", "--csv", str(csv_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert runs["ms"].info.run_name in result.stdout and "eval:top1" in result.stdout
    rows = {row["run"]: row for row in csv.DictReader(csv_path.open())}
    assert set(rows) == {run.info.run_name for run in runs.values()}
    ms_row, mas_row = rows[runs["ms"].info.run_name], rows[runs["mas"].info.run_name]
    assert float(ms_row["loss"]) == runs["ms"].data.metrics["loss"] and ms_row["step"] == "6"
    assert float(ms_row["eval:top1"]) == pytest.approx(record["mean"]["top1"]) and mas_row["eval:top1"] == ""
    shutil.copy(csv_path, ARTIFACTS / "compare_runs.csv")

    # The UI in headless chromium.
    names = [runs["ms"].info.run_name, runs["mas"].info.run_name]
    spec = {"base": url, "experimentId": experiment_id, "runNames": names, "out": str(ARTIFACTS),
            "artifactRun": {"id": runs["ms"].info.run_id, "path": "visuals/step00000006/video_reconstruction.png"},
            "evalRun": {"id": child_id, "name": child.info.run_name, "parentId": runs["ms"].info.run_id,
                        "metric": "top1"},
            "probe": {"filter": "knn_top1", "metric": PROBE_METRIC, "runName": runs["ms"].info.run_name}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run(["node", str(ROOT / "tests" / "ui" / "mlflow_ui.js"), str(tmp_path / "spec.json")],
                            env=dict(os.environ, NODE_PATH=str(node_modules)), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((ARTIFACTS / "report.json").read_text())
    for name in names + [child.info.run_name]:
        assert name in report["runs"]["text"], name  # experiment page: both runs, the eval under ms

    (loss_card,) = [card for card in report["compare"]["cards"] if card["title"] == "loss"]
    for run in runs.values():  # one loss curve per run, plotting exactly what was logged
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
        curves = [t for t in loss_card["traces"] if t["name"] == run.info.run_name]
        assert curves and all(dict(zip(t["x"], t["y"])) == pytest.approx(history) for t in curves)
        assert run.info.run_name in loss_card["text"]  # the legend

    (probe_card,) = [card for card in report["probe"]["cards"] if card["title"] == PROBE_METRIC]
    history = {m.step: m.value for m in client.get_metric_history(runs["ms"].info.run_id, PROBE_METRIC)}
    curves = [t for t in probe_card["traces"] if t["name"] == runs["ms"].info.run_name]
    assert curves and all(dict(zip(t["x"], t["y"])) == pytest.approx(history) for t in curves)

    assert report["artifact"]["image"]["width"] > 0
    assert "visuals/step00000006/video_reconstruction.png" in report["artifact"]["text"]
    eval_text = report["eval"]["text"]
    assert all(metric in eval_text for metric in results) and runs["ms"].info.run_name in eval_text
    for screenshot in ("experiment_runs", "compare_loss_charts", "compare_probe_charts", "run_artifact_reconstruction",
                       "eval_child_run"):
        assert (ARTIFACTS / f"{screenshot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_server_killed_mid_training(mlflow_server, sample_shards, tmp_path):
    """SIGKILL the server's process group while a run trains: training goes on (and says so once);
    after a restart on the same port and database every step, including the outage's, is in MLflow."""
    url, state, port = mlflow_server
    client = MlflowClient(url)
    run_dir, log_path = tmp_path / "run", tmp_path / "train.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(torchrun(free_port(), "--data", str(sample_shards), "--output", str(run_dir),
                                            "--max-steps", "100000", "data.steps_per_epoch=5000",
                                            "train.checkpoint_every_steps=100000", "train.visualize_every_steps=25",
                                            "tracking.experiment=tiny_outage"),
                                   cwd=ROOT, env=train_env(url), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        run_id = wait_until(lambda: (run_dir / "mlflow_run_id").is_file() and
                            (run_dir / "mlflow_run_id").read_text(), "the MLflow run")
        wait_until(lambda: process.poll() is None and client.get_metric_history(run_id, "loss"), "logged losses")

        os.killpg(int((state / "server.pid").read_text()), signal.SIGKILL)
        killed_at = max(steps_logged(run_dir))
        wait_until(lambda: process.poll() is None and max(steps_logged(run_dir)) >= killed_at + 10,
                   "training to go on without the server")

        assert server("start", state, port) == url  # same port, same database
        back_at = max(steps_logged(run_dir))
        wait_until(lambda: process.poll() is None and
                   max(m.step for m in client.get_metric_history(run_id, "loss")) > back_at,
                   "metrics logged after the restart")
        assert process.poll() is None
    finally:
        for pid in child_pids(process.pid):  # every rank gets the stop signal, as from SLURM
            os.kill(pid, signal.SIGTERM)
        process.wait(timeout=300)

    output = log_path.read_text()
    assert process.returncode == 0, output[-4000:]
    assert output.count("training continues") == 1, output[-4000:]
    assert "is reachable again" in output
    final = max(steps_logged(run_dir))
    logged = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert logged == list(range(1, final + 1))  # the outage's metrics were buffered and sent afterwards
    assert killed_at < back_at < final
