"""DINO-style projector head (docs/method.md §3.3)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xkd.config import HeadConfig


class ProjectorHead(nn.Module):
    """Linear-LN-GELU-Linear-LN-GELU-Linear to the bottleneck, L2-normalise, a weight-normalised
    Linear (no bias, gain frozen at 1) to ``out_dim``, then a LayerNorm without affine parameters.

    The weight-normalised layer with gain fixed at 1 is ``x @ normalize(W, rows).T``; we compute
    exactly that instead of a weight_norm parametrisation with a frozen gain parameter, which
    would need special handling in the optimizer and in ZeRO partitioning.

    Initialisation as the reference code (DINO's head): the MLP's Linear layers trunc-normal(0.02)
    with zero biases; the prototypes ``W`` (out_dim, bottleneck_dim) like a default ``nn.Linear``,
    i.e. U(-1/sqrt(bottleneck_dim), 1/sqrt(bottleneck_dim)) (kaiming-uniform with a = sqrt(5)),
    because DINO creates its weight-normed last layer after applying its trunc-normal init.
    The two hidden LayerNorms are separate modules here; the reference appends one LayerNorm
    instance twice, so its two hidden norms share their affine parameters (docs/method.md §8).
    """

    def __init__(self, in_dim: int, config: HeadConfig):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, config.hidden_dim),
            nn.LayerNorm(config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.hidden_dim),
            nn.LayerNorm(config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.bottleneck_dim),
        )
        self.prototypes = nn.Parameter(torch.empty(config.out_dim, config.bottleneck_dim))
        self.out_norm = nn.LayerNorm(config.out_dim, elementwise_affine=False)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.kaiming_uniform_(self.prototypes, a=math.sqrt(5))  # = nn.Linear.reset_parameters

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(pooled), dim=-1)
        x = F.linear(x, F.normalize(self.prototypes, dim=-1))
        return self.out_norm(x)
