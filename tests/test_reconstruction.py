"""Masked reconstruction (eq. 1-2) and per-patch normalised targets."""
import math

import pytest
import torch

from xkd.losses.reconstruction import masked_reconstruction_loss, normalized_patch_targets
from xkd.models import XKD


def test_hand_computed_1x4x2():
    prediction = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]])
    target = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    # token 1: ((3-1)^2 + (4-1)^2) / 2 = (4 + 9) / 2 = 6.5
    # token 3: ((7-3)^2 + (8-3)^2) / 2 = (16 + 25) / 2 = 20.5
    # mean over the two masked tokens: (6.5 + 20.5) / 2 = 13.5
    assert masked_reconstruction_loss(prediction, target, mask).item() == pytest.approx(13.5)
    # all four tokens would give (0.5*(1+4) + 6.5 + 0.5*(9+16) + 20.5) / 4 = (2.5+6.5+12.5+20.5)/4 = 10.5
    assert masked_reconstruction_loss(prediction, target, torch.ones(1, 4)).item() == pytest.approx(10.5)


def test_unmasked_predictions_do_not_count():
    torch.manual_seed(0)
    prediction, target = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 0, 0, 1, 0, 1], [0, 1, 1, 0, 1, 0]], dtype=torch.float32)
    base = masked_reconstruction_loss(prediction, target, mask)
    changed = prediction.clone()
    changed[mask == 0] += 100.0
    assert masked_reconstruction_loss(changed, target, mask).item() == pytest.approx(base.item(), abs=0, rel=1e-6)
    moved = prediction.clone()
    moved[mask == 1] += 1.0
    assert masked_reconstruction_loss(moved, target, mask).item() != pytest.approx(base.item())
    # naive loop: mean over masked tokens of the per-token MSE
    values = [((prediction[b, n] - target[b, n]) ** 2).mean().item()
              for b in range(2) for n in range(6) if mask[b, n] == 1]
    assert base.item() == pytest.approx(sum(values) / len(values), rel=1e-6)


def test_gradient_only_reaches_masked_predictions():
    prediction = torch.randn(1, 4, 3, requires_grad=True)
    target = torch.randn(1, 4, 3)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    masked_reconstruction_loss(prediction, target, mask).backward()
    grad_norm = prediction.grad.abs().sum(dim=-1)[0]
    assert grad_norm[1] == 0 and grad_norm[3] == 0
    assert grad_norm[0] > 0 and grad_norm[2] > 0


def test_normalized_targets_hand_computed():
    patches = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]])
    out = normalized_patch_targets(patches)
    # [1,2,3,4]: mean 2.5, unbiased var ((1.5^2 + 0.5^2) * 2) / 3 = 5/3
    denom = math.sqrt(5.0 / 3.0 + 1e-6)
    expected_first = [-1.5 / denom, -0.5 / denom, 0.5 / denom, 1.5 / denom]
    assert out[0, 0].tolist() == pytest.approx(expected_first, rel=1e-6)
    # the biased variance (5/4) would give other numbers
    assert out[0, 0, 0].item() != pytest.approx(-1.5 / math.sqrt(1.25 + 1e-6), rel=1e-4)
    # constant patch: zero after centring (no division blow-up thanks to eps)
    assert out[0, 1].tolist() == [0.0, 0.0, 0.0, 0.0]
    two = normalized_patch_targets(torch.tensor([[0.0, 10.0]]))
    # mean 5, unbiased var (25 + 25) / 1 = 50
    assert two[0].tolist() == pytest.approx([-5 / math.sqrt(50 + 1e-6), 5 / math.sqrt(50 + 1e-6)], rel=1e-6)


def test_normalized_targets_naive_loop():
    torch.manual_seed(1)
    patches = torch.randn(2, 3, 7) * 3 + 1
    out = normalized_patch_targets(patches)
    for b in range(2):
        for n in range(3):
            values = patches[b, n].tolist()
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
            expected = [(v - mean) / math.sqrt(var + 1e-6) for v in values]
            assert out[b, n].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_model_reconstruction_uses_masked_tokens_and_targets(tiny_config, random_batch, norm_pix_loss):
    config = tiny_config(loss={"norm_pix_loss": norm_pix_loss})
    model = XKD(config)
    batch = random_batch(config, 2)
    student = model.student
    video = batch["video_global"]
    torch.manual_seed(5)
    recon, _, encoded, prediction = student._modality(
        student.video_encoder, student.video_decoder, student.video_head, video, batch["video_local"],
        config.model.video_mask_ratio)
    # target recomputed independently: cuboids of 2x8x8 pixels laid out (tubelet, patch, patch, channel)
    b, c, t, h, w = video.shape
    target = video.reshape(b, c, t // 2, 2, h // 8, 8, w // 8, 8).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, -1, 384)
    if norm_pix_loss:
        mean = target.mean(-1, keepdim=True)
        var = ((target - mean) ** 2).sum(-1, keepdim=True) / (target.shape[-1] - 1)
        target = (target - mean) / torch.sqrt(var + 1e-6)
    assert prediction.shape == target.shape == (2, 64, 384)
    assert encoded.mask.sum().item() == 2 * (64 - 10)
    errors = ((prediction - target) ** 2).mean(-1)
    expected = (errors * encoded.mask).sum() / encoded.mask.sum()
    assert recon.item() == pytest.approx(expected.item(), rel=1e-5)
