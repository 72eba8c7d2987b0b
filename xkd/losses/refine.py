"""Cross-modal attention and feature refinement (eq. 3-6)."""
from __future__ import annotations

import torch


def cross_modal_attention(attention: torch.Tensor, other_attention: torch.Tensor) -> torch.Tensor:
    """Eq. 4: A^x[h, j] = A[h, j] * mean_i A_other[h, i] / mean_j' A[h, j'].

    MeanPool(A A_other^T) over the other modality's tokens, rescaled by this modality's
    mean attention (scale_v / scale_a of the paper).

    Heads are paired by index. When the teachers have different head counts (ViT-L video,
    16 heads, with ViT-B audio, 12 heads: the AudioSet setting), heads cannot be paired and
    every head uses the other modality's attention mean over all its heads; the paper and the
    reference code (which fails on this shape) are silent on the case.

    Args:
        attention: (B, H, N) CLS attention of this modality's teacher (eq. 3).
        other_attention: (B, H', M) CLS attention of the other modality's teacher.
    Returns (B, H, N).
    """
    paired = other_attention.shape[1] == attention.shape[1]
    other_mean = other_attention.mean(dim=-1 if paired else (-2, -1), keepdim=True)
    own_mean = attention.mean(dim=-1, keepdim=True)
    return attention * other_mean / own_mean


def refine_pool(tokens: torch.Tensor, cross_attention: torch.Tensor, energy: str = "norm", eps: float = 1e-12) -> torch.Tensor:
    """Eq. 5-6: re-weight the teacher's patch tokens by the head-averaged cross-modal attention
    and pool them, rescaled by Omega so the pooled vector keeps the mean-pool's energy.

    w_j = mean_h A^x[h, j];  pooled = mean_j(w_j f_j) * Omega.
    ``energy="norm"`` (reference code): Omega = ||mean_j f_j|| / ||mean_j w_j f_j||, so
    ||pooled|| = ||mean_j f_j||.  ``energy="squared_norm"`` (paper eq. 6): the ratio of squared norms.

    Args:
        tokens: (B, N, D) last-layer patch tokens of the teacher. cross_attention: (B, H, N).
    Returns (B, D).
    """
    weights = cross_attention.mean(dim=1)  # (B, N)
    plain = tokens.mean(dim=1)
    weighted = (tokens * weights.unsqueeze(-1)).mean(dim=1)
    omega = plain.norm(dim=-1, keepdim=True) / weighted.norm(dim=-1, keepdim=True).clamp_min(eps)
    if energy == "squared_norm":
        omega = omega.pow(2)
    elif energy != "norm":
        raise ValueError(f"refine energy must be 'norm' or 'squared_norm', got {energy!r}")
    return weighted * omega
