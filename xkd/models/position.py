"""Learned 1-D position embeddings over a flattened token grid plus a CLS slot (spec section 2).

The table is learned for the global view's grid; views with another grid (local views,
224px fine-tuning) get the patch part interpolated over the grid axes: trilinear over
(t, h, w) for video, and for audio along time only (the frequency axis keeps its size,
where linear interpolation is the identity).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


class PositionEmbedding(nn.Module):
    def __init__(self, grid: tuple[int, ...], embed_dim: int):
        super().__init__()
        self.grid = tuple(grid)
        num_patches = 1
        for size in self.grid:
            num_patches *= size
        self.table = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        nn.init.trunc_normal_(self.table, std=0.02)

    @property
    def cls(self) -> torch.Tensor:
        return self.table[:, :1]

    def patches(self, grid: tuple[int, ...]) -> torch.Tensor:
        """Patch part (1, prod(grid), D), interpolated when ``grid`` differs from the learned one."""
        patch_table = self.table[:, 1:]
        grid = tuple(grid)
        if grid == self.grid:
            return patch_table
        if len(grid) != len(self.grid):
            raise ValueError(f"grid {grid} has another rank than the learned grid {self.grid}")
        dim = patch_table.shape[-1]
        x = patch_table.reshape(1, *self.grid, dim).movedim(-1, 1)
        x = F.interpolate(x, size=grid, mode=_MODES[len(grid)], align_corners=False)
        return x.movedim(1, -1).reshape(1, -1, dim)
