"""Which samples each rank reads in each epoch.

Every epoch draws a fresh permutation of the whole split from (seed, epoch); rank r takes
positions r, r + W, r + 2W, ... of it, truncated so that all ranks get the same count.
Ranks are therefore disjoint, their union is the split (up to W-1 samples left out per
epoch, a different few each epoch), and a position (epoch, samples consumed) identifies
exactly where a rank stands, so a resumed run reads the same samples an uninterrupted one
would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochPlan:
    num_samples: int
    world_size: int = 1
    rank: int = 0
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if self.num_samples < self.world_size:
            raise ValueError(f"{self.num_samples} samples cannot feed {self.world_size} ranks")

    @property
    def samples_per_rank(self) -> int:
        return self.num_samples // self.world_size

    def indices(self, epoch: int) -> np.ndarray:
        """Split-level sample indices this rank reads in ``epoch``, in order."""
        permutation = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0x5A])).permutation(self.num_samples)
        return permutation[self.rank :: self.world_size][: self.samples_per_rank]

    def batches_per_epoch(self, batch_size: int) -> int:
        return self.samples_per_rank // batch_size
