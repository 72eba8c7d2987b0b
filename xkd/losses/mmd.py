"""Multi-kernel maximum mean discrepancy (docs/method.md §4.6; paper eq. 7-9) and the head-output
monitors that show when it acts."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from xkd.config import MMD_DISTANCE_SCALES as DISTANCE_SCALES

DEFAULT_GAMMAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def distance_divisor(dim: int, distance_scale: str = "none") -> float:
    """What squared distances are divided by before the kernel: 1 (``none``) or D (``dim``)."""
    if distance_scale == "none":
        return 1.0
    if distance_scale == "dim":
        return float(dim)
    raise ValueError(f"mmd distance scale must be one of {list(DISTANCE_SCALES)}, got {distance_scale!r}")


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float] = DEFAULT_GAMMAS,
            distance_scale: str = "none") -> torch.Tensor:
    """Biased estimate of MMD^2 between the sets ``x`` (n, D) and ``y`` (m, D).

    k(a, b) = sum_g exp(-g ||a - b||^2 / s);  MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y),
    with s = 1 (``distance_scale="none"``, paper and reference code) or s = D (``"dim"``: the
    same as the unscaled MMD of x / sqrt(D) and y / sqrt(D); an ablation switch).
    Computed in float32; pairwise distances are taken directly (not via |a|^2 + |b|^2 - 2ab,
    which loses all precision for the 8192-d LayerNorm-ed head outputs at large gammas).
    """
    x, y = x.float(), y.float()
    divisor = distance_divisor(x.shape[-1], distance_scale)
    joint = torch.cat([x, y], dim=0)
    distances = torch.cdist(joint, joint, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    if divisor != 1.0:
        distances = distances / divisor
    kernel = sum(torch.exp(-gamma * distances) for gamma in gammas)
    n = x.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def mean_pairwise_cosine(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the n(n-1) ordered pairs of distinct rows of ``x`` (n, D).

    Closed form: with unit rows u_i, sum_{i != j} u_i . u_j = ||sum_i u_i||^2 - n.
    0 for near-orthogonal rows, 1 when all rows point the same way (0 when n < 2).
    """
    n = x.shape[0]
    if n < 2:
        return x.new_zeros((), dtype=torch.float32)
    units = torch.nn.functional.normalize(x.float(), dim=-1)
    return (units.sum(dim=0).pow(2).sum() - n) / (n * (n - 1))


def mean_cross_sq_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of ||x_i - y_j||^2 over all n*m pairs, in closed form:
    mean_i ||x_i||^2 + mean_j ||y_j||^2 - 2 mean(x) . mean(y)."""
    x, y = x.float(), y.float()
    return x.pow(2).sum(dim=-1).mean() + y.pow(2).sum(dim=-1).mean() - 2 * (x.mean(dim=0) * y.mean(dim=0)).sum()


@torch.no_grad()
def head_output_monitors(video: torch.Tensor, audio: torch.Tensor, distance_scale: str = "none") -> dict[str, torch.Tensor]:
    """Where the MMD kernel of eq. 9 acts on the students' head outputs (logged, never optimised).

    ``head_cosine_video`` / ``head_cosine_audio``: mean cosine between distinct outputs of one
    modality. ``head_sqdist_cross``: mean squared distance between a video and an audio output,
    divided like the kernel's input (by D with ``distance_scale="dim"``). For the 8192-d non-affine
    LayerNorm-ed outputs ||f||^2 ~= D, so ||f_i - f_j||^2 ~= 2D(1 - cos): at D = 8192 the widest
    default kernel exp(-1e-3 d^2) = exp(-16.4 (1 - cos)) is e^-16 between near-orthogonal outputs,
    e^-3.3 at cos 0.8 and e^-1 at cos 0.94 (docs/method.md §4.6).
    """
    divisor = distance_divisor(video.shape[-1], distance_scale)
    return {
        "head_cosine_video": mean_pairwise_cosine(video),
        "head_cosine_audio": mean_pairwise_cosine(audio),
        "head_sqdist_cross": mean_cross_sq_distance(video, audio) / divisor,
    }
