"""Which samples each rank reads in each epoch.

Every epoch draws a fresh permutation of the whole split from (seed, epoch); rank r takes
positions r, r + W, r + 2W, ... of it, truncated so that all ranks get the same count.
Ranks are therefore disjoint, their union is the split (up to W-1 samples left out per
epoch, a different few each epoch), and a position (epoch, samples consumed) identifies
exactly where a rank stands, so a resumed run reads the same samples an uninterrupted one
would have.

A sample that cannot be read (``xkd.data.sample_check``) keeps its batch full: the first
readable of its slot's stand-ins (:func:`slot_candidates`) takes its place, with views of its
own (:func:`view_rng`). Stand-ins come from the rank's own epoch order, so every rank still
consumes exactly one batch of positions per batch and a position stays rank-independent.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from xkd.data.view_params import sample_seed

STAND_IN = 0x57A1  # separates a stand-in's view stream from the sample's own


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


def stand_in_positions(position: int, count: int, batch_size: int) -> Iterator[int]:
    """Epoch positions whose samples may stand in for an unreadable one at ``position``, in order:
    the same slot of the following batches (so the stand-ins of one batch never collide with
    each other or with the batch), then every other position."""
    tried = {position}
    for step in range(1, count):
        candidate = (position + step * batch_size) % count
        if candidate in tried:
            break
        tried.add(candidate)
        yield candidate
    for step in range(1, count):
        candidate = (position + step) % count
        if candidate not in tried:
            yield candidate


def slot_candidates(order: np.ndarray, position: int, batch_size: int) -> Iterator[tuple[int, int | None]]:
    """(sample index, stand-in position) for the slot at ``position`` of an epoch ``order``: its own
    sample (stand-in position None), then its stand-ins (the slot's position). A loader takes the
    first readable one, so a batch is a function of the order and the unreadable samples only."""
    yield int(order[position]), None
    for candidate in stand_in_positions(position, len(order), batch_size):
        yield int(order[candidate]), position


def view_rng(seed: int, epoch: int, index: int, stand_in_for: int | None = None) -> np.random.Generator:
    """The random stream of one sample's views: its own (seed, epoch, sample) stream, or, standing
    in for the slot at epoch position ``stand_in_for``, a separate one (the sample also appears in
    its own slot this epoch, and should not repeat those views)."""
    if stand_in_for is None:
        return sample_seed(seed, epoch, index)
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index, STAND_IN, stand_in_for]))
