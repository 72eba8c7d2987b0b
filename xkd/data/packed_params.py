"""A sample's view parameters as one float64 vector, and back (issue 15).

The DALI loader's rows cross two boundaries on their way to the trainer: the worker process that
reads them (pickled) and DALI's external source (copied into the graph's buffers, then out). Each
array costs its own pickling, DALI column and tensor conversion, and a sample's parameters are a
dozen small arrays: packed into one vector they cost one of each. float64 holds every value
exactly: flags, frame and sample offsets (below 2**53), the float32 boxes and gains, and the colour
factors, which are rounded to float32 when unpacked, as ``ColorJitter.as_array`` rounds them.

``unpack_view_params`` gives the batch keys both loaders deliver (``VIDEO_CROP_KEYS``,
``VIDEO_PARAM_KEYS`` but "video_to_rgb", ``AUDIO_PARAM_KEYS``), with the PyTorch loader's dtypes.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from xkd.config import ViewsConfig
from xkd.data.view_params import ClipViewParams

COLOR_FACTORS = 4  # brightness, contrast, saturation, hue (ColorJitter)


class PackedField(NamedTuple):
    key: str  # the loader batch's key
    shape: tuple[int, ...]  # one sample's
    dtype: torch.dtype
    start: int  # where it lies in the vector
    stop: int


def packed_fields(views: ViewsConfig) -> tuple[PackedField, ...]:
    """Where each parameter lies in the vector of :func:`pack_view_params` (its order)."""
    n_video, n_audio = views.video_local_views, views.audio_local_views
    layout = (
        ("video_global_box", (4,), torch.float32), ("video_global_flip", (), torch.bool),
        ("video_global_color", (COLOR_FACTORS,), torch.float32), ("video_local_offset", (n_video,), torch.int64),
        ("video_local_box", (n_video, 4), torch.float32), ("video_local_flip", (n_video,), torch.bool),
        ("video_local_color", (n_video, COLOR_FACTORS), torch.float32), ("video_local_blur", (n_video,), torch.float32),
        ("audio_global_gain", (), torch.float32), ("audio_local_offset", (n_audio,), torch.int64),
        ("audio_local_gain", (n_audio,), torch.float32), ("audio_local_box", (n_audio, 4), torch.float32),
    )
    fields, start = [], 0
    for key, shape, dtype in layout:
        stop = start + int(np.prod(shape, dtype=np.int64))
        fields.append(PackedField(key, shape, dtype, start, stop))
        start = stop
    return tuple(fields)


def packed_size(views: ViewsConfig) -> int:
    return packed_fields(views)[-1].stop


def pack_view_params(params: ClipViewParams) -> np.ndarray:
    """One sample's view parameters as a float64 vector, in :func:`packed_fields` order."""
    def color(jitter) -> list[float]:
        return [jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue]

    return np.concatenate([
        params.global_box, [float(params.global_flip)], color(params.global_color), params.local_offsets,
        params.local_boxes.ravel(), params.local_flips, [factor for jitter in params.local_colors for factor in color(jitter)],
        params.local_blur_sigmas, [params.audio_gain], params.audio_local_offsets, params.audio_local_gains,
        params.audio_local_boxes.ravel(),
    ], dtype=np.float64)


def unpack_view_params(packed: torch.Tensor, views: ViewsConfig) -> dict[str, torch.Tensor]:
    """(N, P) vectors of :func:`pack_view_params` -> each batch key, (N, *shape) in its dtype."""
    if packed.dim() != 2 or packed.shape[1] != packed_size(views):
        raise ValueError(f"packed view parameters: expected (samples, {packed_size(views)}) for these views, "
                         f"got {tuple(packed.shape)}")
    out = {}
    for field in packed_fields(views):
        values = packed[:, field.start:field.stop].reshape(-1, *field.shape)
        out[field.key] = values != 0 if field.dtype == torch.bool else values.to(field.dtype)
    return out
