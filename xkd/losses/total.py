"""Final objective (eq. 12)."""
from __future__ import annotations

import torch

from xkd.config import LossConfig


def total_loss(ae: torch.Tensor, da: torch.Tensor, kd: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """L = (lambda_ae L_ae + lambda_da L_da + lambda_kd L_kd) / (lambda_ae + lambda_da + lambda_kd)."""
    weights = config.ae_weight + config.da_weight + config.kd_weight
    return (config.ae_weight * ae + config.da_weight * da + config.kd_weight * kd) / weights
