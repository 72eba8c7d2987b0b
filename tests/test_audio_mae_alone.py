"""benchmarks/audio_mae_alone.py: the audio MAE alone on real clips with sound, and its references."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import audio_mae_alone
import make_av_corpus
from xkd.config import load_config
from xkd.models import XKD

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(classes=2, per_class={"pretrain": 2, "probe_train": 1, "probe_test": 1}, size=32, fps=8, seconds=4.0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("mae") / "corpus"
    make_av_corpus.generate(out, seed=5, **SMALL)
    return out / "pretrain"


@pytest.mark.slow
def test_trains_and_reports_references(clips, tmp_path):
    report = tmp_path / "mae.json"
    export = tmp_path / "export"
    result = audio_mae_alone.main(["--clips", str(clips), "--held-out", "1", "--steps", "4", "--every", "2",
                                   "--batch", "2", "--warmup", "1", "--json", str(report), "--export", str(export)])
    assert json.loads(report.read_text()) == json.loads(json.dumps(result))
    assert result["clips"] == 4 and result["held_out"] == 1
    # 4 mel bins x 16 frames = 64 values per patch, unbiased variance: predicting 0 costs 63/64
    assert result["zero"] == pytest.approx(63 / 64)
    assert [row["step"] for row in result["curve"]] == [2, 4]
    for row in result["curve"]:
        assert 0.0 < row["held_out"] < 10.0 and 0.0 < row["train"] < 10.0
    assert 0.0 < result["ridge"] < 2.0
    # the export holds the trained audio encoder (moved from its init) in both audio slots
    from xkd.engine.export import load_encoder

    torch.manual_seed(0)
    initial = XKD(load_config(ROOT / "configs" / "tiny.yaml")).student.audio_encoder.state_dict()
    teacher = load_encoder(export, "audio_teacher_encoder").state_dict()
    student = load_encoder(export, "audio_student_encoder").state_dict()
    assert teacher.keys() == initial.keys()
    assert all(torch.equal(teacher[k], student[k]) for k in teacher)
    assert not torch.equal(teacher["patch_embed.proj.weight"], initial["patch_embed.proj.weight"])


def test_zero_reference_is_what_zero_costs():
    """The ``zero`` reference is the masked loss of a predictor that outputs 0 everywhere."""
    from xkd.losses.reconstruction import masked_reconstruction_loss, normalized_patch_targets

    torch.manual_seed(0)
    encoder = XKD(load_config(ROOT / "configs" / "tiny.yaml")).student.audio_encoder
    view = torch.randn(3, 1, 80, 224)
    encoded = encoder(view, mask_ratio=0.8)
    target = normalized_patch_targets(encoder.patch_embed.patchify(view))
    loss = masked_reconstruction_loss(torch.zeros_like(target), target, encoded.mask)
    assert loss.item() == pytest.approx(63 / 64, rel=1e-4)


def test_refuses_a_folder_without_clips(tmp_path):
    with pytest.raises(SystemExit, match="no video files"):
        audio_mae_alone.main(["--clips", str(tmp_path), "--steps", "1"])
