"""Learned 1-D position embeddings over a flattened token grid plus a CLS slot (docs/method.md §2.2).

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


class LearnedToken(nn.Module):
    """One learned token (CLS or MAE mask token), trunc-normal initialised.

    Kept in its own module and read through ``forward`` so that DeepSpeed ZeRO-3 gathers it
    like any other module parameter, also when its owner runs twice in one step (global and
    local views).
    """

    def __init__(self, embed_dim: int, std: float = 0.02):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.value, std=std)

    def forward(self) -> torch.Tensor:
        return self.value


class PositionEmbedding(nn.Module):
    def __init__(self, grid: tuple[int, ...], embed_dim: int):
        super().__init__()
        self.grid = tuple(grid)
        num_patches = 1
        for size in self.grid:
            num_patches *= size
        self.table = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, grid: tuple[int, ...] | None = None) -> torch.Tensor:
        """Table (1, 1 + prod(grid), D) for ``grid``: the CLS slot, then the patch part,
        interpolated when ``grid`` differs from the learned one.

        Always read the table through this call (not ``.table``): ZeRO-3 gathers a module's
        partitioned parameters only around its forward.
        """
        grid = self.grid if grid is None else tuple(grid)
        if grid == self.grid:
            return self.table
        if len(grid) != len(self.grid):
            raise ValueError(f"grid {grid} has another rank than the learned grid {self.grid}")
        patch_table = self.table[:, 1:]
        dim = patch_table.shape[-1]
        x = patch_table.reshape(1, *self.grid, dim).movedim(-1, 1)
        x = F.interpolate(x, size=grid, mode=_MODES[len(grid)], align_corners=False)
        return torch.cat([self.table[:, :1], x.movedim(1, -1).reshape(1, -1, dim)], dim=1)
