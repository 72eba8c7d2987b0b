"""Masked reconstruction (paper eq. 1-2; docs/method.md §4.1)."""
from __future__ import annotations

import torch


def normalized_patch_targets(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise each patch vector by its own mean and variance (MAE's norm_pix_loss).

    (x - mean) / sqrt(var + eps), statistics over the last dimension, unbiased=True as in MAE.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 1: mean squared error over the masked tokens only.

    Args:
        prediction, target: (B, N, P). mask: (B, N), 1 where the token was masked.
    Returns the MSE averaged over the patch vector, then over masked tokens.
    """
    per_token = (prediction.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)
