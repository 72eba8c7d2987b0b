"""Cross-modal attention and feature refinement (docs/method.md §4.3-4.4; paper eq. 3-6)."""
from __future__ import annotations

import torch


def other_head_index(heads: int, other_heads: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The other modality's head that head ``h`` of this modality is paired with: ``(h * H_other) // H``.

    Equal head counts pair heads by index (the reference code's case). With ViT-L video (16 heads)
    and ViT-B audio (12 heads) video head h uses audio head ``3h // 4`` (0,0,1,2,3,3,4,5,6,6,7,8,
    9,9,10,11) and audio head h uses video head ``4h // 3`` (0,1,2,4,5,6,8,9,10,12,13,14): heads
    at the same relative position in the stack (docs/method.md §4.3).
    """
    return torch.arange(heads, device=device) * other_heads // heads


def cross_modal_attention(attention: torch.Tensor, other_attention: torch.Tensor) -> torch.Tensor:
    """Paper eq. 4: A^x[h, j] = A[h, j] * mean_i A_other[g(h), i] / mean_j' A[h, j'].

    MeanPool(A A_other^T) over the other modality's tokens, rescaled by this modality's
    mean attention (scale_v / scale_a of the paper).

    ``g(h) = (h * H_other) // H`` (:func:`other_head_index`): the identity when both teachers
    have the same number of heads. Averaging the other modality over all its heads instead
    would make its factor a per-sample constant that Omega (eq. 6) cancels exactly, so the
    refinement would not depend on the other modality at all (docs/method.md §4.3).

    Args:
        attention: (B, H, N) CLS attention of this modality's teacher (eq. 3).
        other_attention: (B, H', M) CLS attention of the other modality's teacher.
    Returns (B, H, N).
    """
    heads, other_heads = attention.shape[1], other_attention.shape[1]
    other_mean = other_attention.mean(dim=-1, keepdim=True)  # (B, H', 1)
    if other_heads != heads:
        other_mean = other_mean[:, other_head_index(heads, other_heads, other_mean.device)]  # (B, H, 1)
    own_mean = attention.mean(dim=-1, keepdim=True)
    return attention * other_mean / own_mean


def refine_pool(tokens: torch.Tensor, cross_attention: torch.Tensor, energy: str = "norm", eps: float = 1e-12) -> torch.Tensor:
    """Paper eq. 5-6: re-weight the teacher's patch tokens by the head-averaged cross-modal attention
    and pool them, rescaled by Omega so the pooled vector keeps the mean-pool's energy.

    w_j = mean_h A^x[h, j];  pooled = mean_j(w_j f_j) * Omega.
    ``energy="norm"`` (reference code): Omega = ||mean_j f_j|| / ||mean_j w_j f_j||, so
    ||pooled|| = ||mean_j f_j||.  ``energy="squared_norm"`` (paper eq. 6): the ratio of squared norms.
    (docs/method.md §4.4.)

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
