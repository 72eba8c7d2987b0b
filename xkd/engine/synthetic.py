"""Random batches with the exact layout of the model's inputs (the loaders' batches once finished by
``xkd.data.batch_finish.BatchFinisher``), for smoke runs and benchmarks."""
from __future__ import annotations

import torch

from xkd.config import XKDConfig


def synthetic_batch(config: XKDConfig, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    v = config.views

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "video_global": randn(batch_size, 3, v.video_global_frames, v.video_global_size, v.video_global_size),
        "video_local": randn(batch_size, v.video_local_views, 3, v.video_local_frames, v.video_local_size,
                             v.video_local_size),
        "audio_global": randn(batch_size, 1, v.mel_bins, v.audio_global_frames),
        "audio_local": randn(batch_size, v.audio_local_views, 1, v.mel_bins, v.audio_local_frames),
    }
