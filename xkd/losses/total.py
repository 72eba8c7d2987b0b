"""How the loss pairs are reduced and the final objective (docs/method.md §4.8; paper eq. 2, 9, 11, 12)."""
from __future__ import annotations

import torch

from xkd.config import PAIR_REDUCTIONS, LossConfig


def reduce_pair(first: torch.Tensor, second: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """One of the three two-term losses: L_ae = L^v + L^a (eq. 2), L_da = MMD_s + MMD_t (eq. 9),
    L_kd = CE(v->a) + CE(a->v) (eq. 11).

    ``reduction="sum"`` is the paper; ``"mean"`` is the reference code, which averages each of the
    three pairs (so its total loss is exactly half the paper's, with the same relative weights).
    """
    if reduction == "sum":
        return first + second
    if reduction == "mean":
        return (first + second) / 2
    raise ValueError(f"pair reduction must be one of {list(PAIR_REDUCTIONS)}, got {reduction!r}")


def total_loss(ae: torch.Tensor, da: torch.Tensor, kd: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """L = (lambda_ae L_ae + lambda_da L_da + lambda_kd L_kd) / (lambda_ae + lambda_da + lambda_kd).

    Paper eq. 12 without the normalisation; the reference code divides by the sum of the weights.
    """
    weights = config.ae_weight + config.da_weight + config.kd_weight
    return (config.ae_weight * ae + config.da_weight * da + config.kd_weight * kd) / weights
