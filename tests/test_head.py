"""DINO-style projector head (docs/method.md §3.3) and modality-specific widths."""
import math

import pytest
import torch

from xkd.config import HeadConfig
from xkd.models import XKD
from xkd.models.head import ProjectorHead


def _head():
    torch.manual_seed(0)
    return ProjectorHead(12, HeadConfig(hidden_dim=16, bottleneck_dim=6, out_dim=10))


@torch.no_grad()
def test_forward_matches_naive_computation():
    head = _head()
    x = torch.randn(3, 12)
    out = head(x)
    assert out.shape == (3, 10)
    z = head.mlp(x)
    w = head.prototypes
    for b in range(3):
        norm_z = math.sqrt(sum(v * v for v in z[b].tolist()))
        logits = []
        for k in range(10):
            norm_w = math.sqrt(sum(v * v for v in w[k].tolist()))
            logits.append(sum(z[b, i].item() / norm_z * w[k, i].item() / norm_w for i in range(6)))
        mean = sum(logits) / 10
        var = sum((v - mean) ** 2 for v in logits) / 10  # LayerNorm: biased variance, eps 1e-5
        expected = [(v - mean) / math.sqrt(var + 1e-5) for v in logits]
        assert out[b].tolist() == pytest.approx(expected, rel=1e-4, abs=1e-5)


@torch.no_grad()
def test_weight_norm_gain_is_frozen_at_one():
    head = _head()
    x = torch.randn(4, 12)
    before = head(x)
    # rescaling a prototype row changes nothing (W / ||W|| per row); the bottleneck is L2-normalised too
    head.prototypes[3].mul_(7.5)
    head.mlp[-1].weight.mul_(3.0)
    head.mlp[-1].bias.mul_(3.0)
    assert torch.allclose(head(x), before, atol=1e-5)
    names = {name for name, _ in head.named_parameters()}
    assert "prototypes" in names and not any("gain" in n or "weight_g" in n for n in names)
    assert not any(name.startswith("out_norm") for name in names)  # non-affine final LayerNorm


def test_prototypes_receive_gradients():
    head = _head()
    (head(torch.randn(4, 12)) * torch.randn(4, 10)).sum().backward()
    assert head.prototypes.grad is not None and head.prototypes.grad.abs().sum() > 0


def test_prototypes_initialised_like_a_default_linear():
    """Reference (DINO head): the weight-normed last layer keeps nn.Linear's default init,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the MLP's Linears are trunc-normal(0.02)."""
    torch.manual_seed(0)
    head = ProjectorHead(12, HeadConfig(hidden_dim=16, bottleneck_dim=64, out_dim=1024))
    w = head.prototypes.detach()
    bound = 1 / math.sqrt(64)  # 0.125
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound  # fills the interval
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # uniform: std = bound / sqrt(3)
    assert w.mean().item() == pytest.approx(0.0, abs=3e-3)
    for layer in (head.mlp[0], head.mlp[3], head.mlp[6]):
        # trunc_normal_(std=0.02) truncates at +-2 (absolute), i.e. a plain N(0, 0.02^2) in practice
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.2) and torch.all(layer.bias == 0)
    assert w.std().item() > 3 * 0.02  # not the MLP's init


def test_ms_with_different_encoder_widths_runs(tiny_config, random_batch):
    # modality-specific XKD supports different encoders per modality (ViT-L video + ViT-B audio on AudioSet)
    config = tiny_config(model={"variant": "ms", "video_encoder": "small", "audio_encoder": "tiny"})
    torch.manual_seed(0)
    model = XKD(config)
    assert model.student.video_encoder.embed_dim == 384 and model.student.audio_encoder.embed_dim == 64
    assert model.student.video_decoder.embed.in_features == 384
    assert model.student.audio_head.mlp[0].in_features == 64
    out = model(random_batch(config, 1), 0.1, 0.07)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert model.student.video_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
