"""The periodic probe during pretraining (xkd/engine/probe.py): scores computed by hand, and on
2 real CPU ranks: logged once per probe step (metrics.jsonl and MLflow), a resumed run continues the
curves without duplicates, and the training trajectory is bitwise the same with the probe on or off."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from test_pretrain import ROOT, check, losses_by_step, run_env, torchrun
from xkd.config import ConfigError, load_config
from xkd.engine.probe import fixed_split, knn_top1, linear_top1

PROBE_KEYS = ("probe/sounds/audio/teacher/knn_top1", "probe/sounds/audio/teacher/linear_top1")


def test_knn_weighted_vote_by_hand():
    """Three train points, one test point x = (1, 0.1) of class 0. Cosines: a = (1, 0) class 0:
    0.99504; b = (0.8, 0.6) class 1: 0.85573; c = (0, 1) class 1: 0.09950.
    k=2, T=0.07: a outvotes b -> correct. k=3, T=1: e^0.995 = 2.705 < e^0.856 + e^0.0995 = 3.458
    -> class 1, wrong. k=3, T=0.07: e^14.21 > e^12.22 + e^1.42 -> correct (the weights decide)."""
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test, test_labels = torch.tensor([[1.0, 0.1]]), torch.tensor([0])
    normalize = torch.nn.functional.normalize
    cosines = (normalize(test, dim=1) @ normalize(train, dim=1).T)[0].tolist()
    assert cosines == pytest.approx([0.99504, 0.85573, 0.09950], abs=1e-5)
    assert math.exp(cosines[0]) < math.exp(cosines[1]) + math.exp(cosines[2])
    assert knn_top1(train, labels, test, test_labels, 2, k=2, temperature=0.07) == 100.0
    assert knn_top1(train, labels, test, test_labels, 2, k=3, temperature=1.0) == 0.0
    assert knn_top1(train, labels, test, test_labels, 2, k=3, temperature=0.07) == 100.0
    assert knn_top1(train, labels, test, test_labels, 2, k=50, temperature=1.0) == 0.0  # k capped at 3


def test_planted_signal_probe_set():
    """Features = class centre + small noise: k-NN and the linear probe are perfect; with the labels
    of the test half shuffled, k-NN scores what the shuffled labels say (computed by hand)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    centres = np.eye(4, 16) * 5
    features = (centres[labels] + rng.normal(0, 0.1, (40, 16))).astype(np.float32)
    train, test = fixed_split(labels)
    assert list(test[:5]) == [1, 3, 5, 7, 9] and len(train) == len(test) == 20
    as_tensor = torch.from_numpy
    assert knn_top1(as_tensor(features[train]), as_tensor(labels[train]), as_tensor(features[test]),
                    as_tensor(labels[test]), 4) == 100.0
    assert linear_top1(features[train], labels[train], features[test], labels[test]) == 100.0
    wrong = labels[test].copy()
    wrong[:5] = (wrong[:5] + 1) % 4  # 5 of 20 test labels changed: the neighbours still vote the true class
    assert knn_top1(as_tensor(features[train]), as_tensor(labels[train]), as_tensor(features[test]),
                    as_tensor(wrong), 4) == 75.0


def test_probe_config_is_checked():
    with pytest.raises(ConfigError, match=r"probe.sets: expected at least one probe set"):
        load_config(ROOT / "configs" / "tiny.yaml", ["probe.sets=[]"])
    with pytest.raises(ConfigError, match=r"probe.sets\[0\].modality: .*audio"):
        load_config(ROOT / "configs" / "tiny.yaml", ["probe.sets=[{name: s, data: d, modality: text}]"])
    with pytest.raises(ConfigError, match=r"probe.encoders"):
        load_config(ROOT / "configs" / "tiny.yaml", ["probe.encoders=[ema]"])
    assert load_config(ROOT / "configs" / "tiny.yaml").probe.every_steps > 0  # on in the tiny config


def run(output: Path, shards: Path, *overrides: str, steps: int = 10) -> None:
    check(subprocess.run(torchrun("--data", str(shards), "--output", str(output), "--max-steps", str(steps),
                                  "train.log_every_steps=2", *overrides),
                         cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600))


def probe_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if PROBE_KEYS[0] in row]


@pytest.fixture(scope="module")
def probed(sample_shards, sound_shards, tmp_path_factory):
    """Probe on (every 5 steps, teacher and student), probe off, and probe on killed at 5 + resumed."""
    sets = (f"probe.sets=[{{name: sounds, data: '{sound_shards}', modality: audio, "
            f"splits: 'esc50:{ROOT / 'data' / 'sounds' / 'folds.csv'}'}}]")
    on = [sets, "probe.every_steps=5", "probe.encoders=[teacher, student]"]
    root = tmp_path_factory.mktemp("probe")
    run(root / "on", sample_shards, *on)
    run(root / "off", sample_shards, "probe.every_steps=0")
    run(root / "resumed", sample_shards, *on, steps=5)
    run(root / "resumed", sample_shards, *on)
    return root


@pytest.mark.slow
def test_probe_logged_once_per_probe_step(probed):
    rows = probe_rows(probed / "on")
    assert [row["step"] for row in rows] == [0, 5, 10]  # the random-init baseline, then every 5 steps
    assert "loss" not in rows[0] and all("loss" in row for row in rows[1:])  # merged into the training rows
    for row in rows:
        for key in (*PROBE_KEYS, "probe/sounds/audio/student/knn_top1", "probe/sounds/audio/student/linear_top1"):
            assert 0.0 <= row[key] <= 100.0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{probed / 'mlruns.db'}")
    run_id = (probed / "on" / "mlflow_run_id").read_text().strip()
    for key in PROBE_KEYS:
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [0, 5, 10]  # rank 0 only, once per step
        assert [m.value for m in history] == [row[key] for row in rows]


@pytest.mark.slow
def test_probe_does_not_change_training(probed):
    """Bitwise: the probe forks the RNG, runs without grad and restores the encoders' modes."""
    on, off = losses_by_step(probed / "on"), losses_by_step(probed / "off")
    assert sorted(off) == [2, 4, 6, 8, 10] and sorted(on) == [2, 4, 5, 6, 8, 10]  # a probe step is also logged
    assert {step: on[step] for step in off} == off
    assert not probe_rows(probed / "off")


@pytest.mark.slow
def test_resumed_run_continues_the_probe_curves(probed):
    rows = probe_rows(probed / "resumed")
    assert [row["step"] for row in rows] == [0, 5, 10]  # no second baseline, no repeated step 5
    straight = probe_rows(probed / "on")
    assert [[row[key] for key in PROBE_KEYS] for row in rows] == [[row[key] for key in PROBE_KEYS] for row in straight]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{probed / 'mlruns.db'}")
    run_id = (probed / "resumed" / "mlflow_run_id").read_text().strip()
    assert [m.step for m in client.get_metric_history(run_id, PROBE_KEYS[0])] == [0, 5, 10]
