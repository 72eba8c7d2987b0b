"""Optimizer parameter groups (spec section 5): weight decay on weights only."""
from __future__ import annotations

from torch import nn


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight matrices decayed; biases and 1-D parameters (norms) not.

    Follows the spec literally: anything with ndim <= 1 or named ``*.bias`` gets no decay.
    Shared parameters (MAS/MATS blocks) appear once.
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
