"""The public embedding API (xkd.load_encoder) and `python -m xkd`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import xkd
from xkd.data.logmel import LogMel
from xkd.evaluation.clips import video_test_view
from xkd.engine.export import export_config, load_encoder as eval_encoder

ROOT = Path(__file__).resolve().parents[1]


def test_audio_embedding_equals_the_evaluation_feature(random_tiny_export):
    model, preprocess = xkd.load_encoder(random_tiny_export, "audio")
    views = export_config(random_tiny_export).views
    t = np.arange(int(views.audio_global_seconds * views.audio_sample_rate)) / views.audio_sample_rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    x = preprocess(wave)
    assert x.shape == (1, 1, views.mel_bins, views.audio_global_frames)
    with torch.no_grad():
        features = model(x).pooled()
        reference = eval_encoder(Path(random_tiny_export), "audio_teacher_encoder")(
            LogMel(views)(torch.from_numpy(wave))[None, None]).pooled()
    assert features.shape == (1, model.embed_dim) and torch.equal(features, reference)


def test_video_embedding_takes_frames_last_or_channels_first(random_tiny_export):
    model, preprocess = xkd.load_encoder(random_tiny_export, "video", encoder="student")
    views = export_config(random_tiny_export).views
    frames = torch.randint(0, 256, (views.video_global_frames, 48, 80, 3), dtype=torch.uint8)
    x = preprocess(frames)
    assert x.shape == (1, 3, views.video_global_frames, views.video_global_size, views.video_global_size)
    assert torch.equal(x, preprocess(frames.permute(0, 3, 1, 2)))
    assert torch.equal(x[0], video_test_view(frames.permute(0, 3, 1, 2), views.video_global_size))
    with torch.no_grad():
        assert model(x).pooled().shape == (1, model.embed_dim)
    with pytest.raises(ValueError, match="modality 'text'"):
        xkd.load_encoder(random_tiny_export, "text")


def test_python_m_xkd_lists_the_tools():
    out = subprocess.run([sys.executable, "-m", "xkd"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for tool in ("data_prep/make_shards.py", "launch/pretrain.py", "eval/linear_svm.py", "xkd.load_encoder"):
        assert tool in out
        if tool.endswith(".py"):
            assert (ROOT / tool).is_file(), tool
