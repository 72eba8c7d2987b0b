"""The two config switches the ablation needs: model.teacher_pool and loss.recon_modalities."""
from __future__ import annotations

import pytest
import torch

from xkd.config import ConfigError
from xkd.models import XKD
from xkd.models.xkd import mean_pool


def test_switch_defaults_and_validation(tiny_config):
    config = tiny_config()
    assert config.model.teacher_pool == "refine" and config.loss.recon_modalities == "both"
    with pytest.raises(ConfigError, match="model.teacher_pool"):
        tiny_config(model={"teacher_pool": "max"})
    with pytest.raises(ConfigError, match="loss.recon_modalities"):
        tiny_config(loss={"recon_modalities": "audio_only"})


def test_mean_pool_teacher_uses_the_plain_mean(tiny_config, random_batch):
    torch.manual_seed(0)
    config = tiny_config(model={"teacher_pool": "mean"})
    model = XKD(config)
    batch = random_batch(config)
    teacher = model.teacher
    tokens = torch.randn(2, 5, 7)
    assert torch.equal(mean_pool(tokens, torch.rand(2, 3, 5)), tokens.mean(dim=1))
    video_out = teacher.video_encoder(batch["video_global"], return_attention=True)
    expected = teacher.video_head(video_out.patch_tokens.mean(dim=1))
    captured = {}
    handle = teacher.video_head.register_forward_hook(lambda mod, inp, out: captured.update(input=inp[0]))
    teacher(batch["video_global"], batch["audio_global"], 0.1, 0.07)
    handle.remove()
    torch.testing.assert_close(teacher.video_head(captured["input"]), expected)
    torch.testing.assert_close(captured["input"], video_out.patch_tokens.mean(dim=1))


def test_recon_video_only_gives_no_audio_gradient(tiny_config, random_batch):
    config = tiny_config(loss={"recon_modalities": "video", "kd_weight": 0.0, "da_weight": 0.0})
    torch.manual_seed(0)
    model = XKD(config)
    batch = random_batch(config)
    out = model(batch, 0.1, 0.07)
    torch.testing.assert_close(out["ae"], out["recon_video"])
    assert out["recon_audio"] > 0  # still measured and logged
    out["loss"].backward()
    audio = [p.grad for p in model.student.audio_decoder.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in audio)  # in the graph, weight 0
    assert any(torch.count_nonzero(p.grad) > 0 for p in model.student.video_decoder.parameters())
