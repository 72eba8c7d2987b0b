"""Multi-kernel maximum mean discrepancy (eq. 7-9)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_GAMMAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float] = DEFAULT_GAMMAS) -> torch.Tensor:
    """Biased estimate of MMD^2 between the sets ``x`` (n, D) and ``y`` (m, D).

    k(a, b) = sum_g exp(-g ||a - b||^2);  MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y).
    Computed in float32; pairwise distances are taken directly (not via |a|^2 + |b|^2 - 2ab,
    which loses all precision for the 8192-d LayerNorm-ed head outputs at large gammas).
    """
    x, y = x.float(), y.float()
    joint = torch.cat([x, y], dim=0)
    distances = torch.cdist(joint, joint, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    kernel = sum(torch.exp(-gamma * distances) for gamma in gammas)
    n = x.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
