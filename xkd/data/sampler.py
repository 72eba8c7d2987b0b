"""Which samples each rank reads in each epoch.

Every epoch draws a fresh permutation of the whole split from (seed, epoch); rank r takes
positions r, r + W, r + 2W, ... of it, truncated so that all ranks get the same count.
Ranks are therefore disjoint, their union is the split (up to W-1 samples left out per
epoch, a different few each epoch), and a position (epoch, samples consumed) identifies
exactly where a rank stands, so a resumed run reads the same samples an uninterrupted one
would have.

With ``samples_per_decode`` k > 1 each clip of the order yields k consecutive training samples
(repeats 0..k-1, views of their own, one decode): the position counts samples, so the clip slot
of position p is p // k and its repeat p % k; a batch of B samples holds B / k whole clips.

A sample that cannot be read (``xkd.data.sample_check``) keeps its batch full: the first
readable of its slot's stand-ins (:func:`slot_candidates`) takes its place, with views of its
own (:func:`view_rng`). Stand-ins come from the rank's own epoch order, so every rank still
consumes exactly one batch of positions per batch and a position stays rank-independent.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from xkd.config import ViewsConfig
from xkd.data.format import HEIGHT, NUM_AUDIO_SAMPLES, NUM_FRAMES, WIDTH
from xkd.data.view_params import ClipViewParams, draw_view_params

STAND_IN = 0x57A1  # separates a stand-in's view stream from the sample's own
REPEAT = 0x7E9  # separates a repeat's view stream from the clip's first sample


@dataclass(frozen=True)
class EpochPlan:
    num_samples: int  # clips in the split
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    samples_per_decode: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if self.num_samples < self.world_size:
            raise ValueError(f"{self.num_samples} samples cannot feed {self.world_size} ranks")
        if self.samples_per_decode < 1:
            raise ValueError(f"samples_per_decode must be positive, got {self.samples_per_decode}")

    @property
    def clips_per_rank(self) -> int:
        return self.num_samples // self.world_size

    @property
    def samples_per_rank(self) -> int:
        """Training samples this rank reads per epoch (k per clip)."""
        return self.clips_per_rank * self.samples_per_decode

    def indices(self, epoch: int) -> np.ndarray:
        """Split-level indices of the clips this rank reads in ``epoch``, in order."""
        permutation = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0x5A])).permutation(self.num_samples)
        return permutation[self.rank :: self.world_size][: self.clips_per_rank]

    def clips_per_batch(self, batch_size: int) -> int:
        """Clips in a batch of ``batch_size`` samples (a whole number: the config checks it)."""
        if batch_size % self.samples_per_decode:
            raise ValueError(f"batch of {batch_size} samples is not a multiple of samples_per_decode "
                             f"({self.samples_per_decode})")
        return batch_size // self.samples_per_decode

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


def view_rng(seed: int, epoch: int, index: int, stand_in_for: int | None = None, repeat: int = 0
             ) -> np.random.Generator:
    """The random stream of one sample's views: its own (seed, epoch, sample) stream, or, standing
    in for the slot at epoch position ``stand_in_for``, a separate one (the sample also appears in
    its own slot this epoch, and should not repeat those views). Repeat r > 0 of a clip
    (``samples_per_decode``) has a stream of its own; repeat 0 is the stream of k = 1."""
    key = [seed, epoch, index]  # == view_params.sample_seed(seed, epoch, index) for a sample's own views
    if stand_in_for is not None:
        key += [STAND_IN, stand_in_for]
    if repeat:
        key += [REPEAT, repeat]
    return np.random.default_rng(np.random.SeedSequence(key))


def clip_view_params(seed: int, epoch: int, index: int, stand_in_for: int | None, repeats: int, views: ViewsConfig,
                     info: np.ndarray, augment: bool = True) -> list[ClipViewParams]:
    """The view parameters of the ``repeats`` samples one decoded clip yields. They share repeat 0's
    temporal window (so the clip is decoded once, over one window); crops, flips, colour, blur,
    local offsets, gains and spectrogram crops are drawn per repeat from its own stream."""
    shape = int(info[NUM_FRAMES]), int(info[NUM_AUDIO_SAMPLES]), int(info[HEIGHT]), int(info[WIDTH])
    params = [draw_view_params(view_rng(seed, epoch, index, stand_in_for, r), views, *shape, augment)
              for r in range(repeats)]
    first = params[0]
    return [first] + [dataclasses.replace(p, video_start=first.video_start, audio_start=first.audio_start)
                      for p in params[1:]]
