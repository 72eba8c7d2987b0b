"""A tiny XKD pretrained on the sample clips vs the same encoder at random init, through the eval CLIs.

The session fixture pretrains configs/tiny.yaml for 200 steps with ``torchrun --nproc_per_node 2
launch/pretrain.py`` on the sample shards (8 real clips; ``optim.epochs=200`` so that the warm-up /
cosine schedule and the EMA schedule fit the 200 steps - otherwise the tiny schedule would end at
step 20), exports the encoders, and writes the step-0 (random init) encoders of the same config
with eval/random_init.py. The linear SVM protocol (docs/method.md §6: 10 augmented training clips,
3 test clips, C by cross-validation on the training folds) then runs on the bundled real sound
effects (22 classes, 4 ESC-50-style folds, chance 4.5 %).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from media import free_port

from eval_media import SOUND_FOLDS
from xkd.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 200
CHANCE = 100.0 / 22

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    out = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def run(*args: str | Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=ROOT, env=env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def pretrained_run(sample_shards, tmp_path_factory) -> Path:
    """runs/tiny pretrained for 200 steps, with export/step00000200 and export/random_init."""
    run_dir = tmp_path_factory.mktemp("eval_pretrain") / "runs" / "tiny"
    overrides = [f"optim.epochs={STEPS}", "optim.warmup_epochs=10", "train.checkpoint_every_steps=1000",
                 "train.log_every_steps=50"]
    if "visualize_every_steps" in {f.name for f in dataclasses.fields(TrainConfig)}:
        overrides.append("train.visualize_every_steps=0")  # figures are not what this test measures
    run(BIN / "torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()),
        ROOT / "launch" / "pretrain.py", "--data", sample_shards, "--output", run_dir,
        "--max-steps", str(STEPS), *overrides)
    run(sys.executable, ROOT / "launch" / "export_encoders.py", run_dir)
    export = run_dir / "export" / f"step{STEPS:08d}"
    run(sys.executable, ROOT / "eval" / "random_init.py", "--like", export, "--output", run_dir / "export" / "random_init")
    return run_dir


def linear_svm(checkpoint: Path, encoder: str, sound_shards: Path, output: Path) -> dict:
    run(sys.executable, ROOT / "eval" / "linear_svm.py", "--checkpoint", checkpoint, "--encoder", encoder,
        "--modality", "audio", "--data", sound_shards, "--splits", f"esc50:{SOUND_FOLDS}", "--dataset-name", "sounds",
        "--workers", "0", "--jobs", "2", "--no-progress", "--output", output)
    return json.loads(output.read_text())


def test_pretrained_features_beat_random_init_under_linear_svm(pretrained_run, sound_shards, tmp_path):
    export = pretrained_run / "export" / f"step{STEPS:08d}"
    random_init = pretrained_run / "export" / "random_init"
    results = {
        "pretrained teacher": linear_svm(export, "teacher", sound_shards, tmp_path / "pre_teacher.json"),
        "random init": linear_svm(random_init, "teacher", sound_shards, tmp_path / "random.json"),
    }
    top1 = {name: r["mean"]["top1"] for name, r in results.items()}
    print("\nlinear SVM on the sound set (22 classes, 4 folds), mean top-1: "
          + ", ".join(f"{name} {value:.2f}%" for name, value in top1.items()) + f", chance {CHANCE:.2f}%")
    print("per fold: " + "; ".join(f"{n}: {[round(s['metrics']['top1'], 1) for s in r['splits']]} C "
                                   f"{[s['params']['C'] for s in r['splits']]}" for n, r in results.items()))
    assert top1["pretrained teacher"] > top1["random init"]  # the default (teacher) features
    assert min(top1.values()) > 3 * CHANCE
    for result in results.values():
        assert [s["split"] for s in result["splits"]] == ["fold1", "fold2", "fold3", "fold4"]
        assert all(s["params"]["c_selection"] == "cv" and s["params"]["C"] in result["params"]["c_grid"]
                   for s in result["splits"])

    # Every result is a child run of the pretraining run: one per fold and one for the mean.
    from mlflow.tracking import MlflowClient

    from xkd.tracking import default_tracking_uri

    parent_id = (pretrained_run / "mlflow_run_id").read_text().strip()
    client = MlflowClient(default_tracking_uri(pretrained_run))
    teacher = results["pretrained teacher"]
    assert len(teacher["mlflow_run_ids"]) == 5
    for run_id, split in zip(teacher["mlflow_run_ids"], [*teacher["splits"], None]):
        child = client.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.data.params["protocol"] == "linear_svm" and child.data.params["dataset"] == "sounds"
        assert child.data.params["split"] == (split["split"] if split else "mean")
        expected = split["metrics"]["top1"] if split else teacher["mean"]["top1"]
        assert child.data.metrics["top1"] == pytest.approx(expected)
        if split:
            assert float(child.data.params["C"]) == split["params"]["C"]

    # The report lists both checkpoints under the other datasets, beside the paper's table.
    report = run(sys.executable, ROOT / "eval" / "report.py", tmp_path).stdout
    assert "| K400 (paper) | XKD |" in report
    assert f"{top1['pretrained teacher']:.1f}" in report and f"{top1['random init']:.1f}" in report


def test_late_fusion_cli_on_real_clips(pretrained_run, sample_shards, tmp_path):
    """Audio + video features of the same clips, concatenated, LinearSVC; a child run of the pretraining."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "split1_train.txt").write_text("music/dancer.avi\nface/WolfgangLanger_Pexels.mp4\ngraphics/world.mp4\n"
                                            "speech/jwpIntro.mp4\nscene/bikes.mp4\n")
    (lists / "split1_test.txt").write_text("music/pianist.avi\nface/single_face.mp4\ngraphics/default.mp4\n")
    export = pretrained_run / "export" / f"step{STEPS:08d}"
    out = tmp_path / "fusion.json"
    run(sys.executable, ROOT / "eval" / "late_fusion.py", "--checkpoint", export, "--data", sample_shards,
        "--splits", f"lists:{lists}", "--dataset-name", "sample_av", "--train-clips", "3", "--workers", "0",
        "--no-progress", "--output", out)
    result = json.loads(out.read_text())
    assert result["protocol"] == "late_fusion" and result["modality"] == "audio+video"
    assert result["splits"][0]["params"]["test_items"] == 3 and len(result["mlflow_run_ids"]) == 2
    features = sorted(p.name for p in (export / "features").glob("sample_av-*"))
    assert [n.split("-")[1] for n in features] == ["audio_teacher_encoder"] * 2 + ["video_teacher_encoder"] * 2
