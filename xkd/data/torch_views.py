"""Per-view tensor operations of both loaders (docs/method.md §1): the PyTorch loader on the frames
PyAV decoded, the DALI loader on the frames DALI decoded (torchvision's uint8 resize is several
times cheaper on a CPU than DALI's CPU ``resize``; BENCHMARKS.md, issue 15).

Each function applies one clip's :class:`~xkd.data.view_params.ClipViewParams` (drawn once per
(seed, epoch, sample)) to decoded frames or to an audio window; no randomness is drawn here.
Video goes in as uint8 (T, C, H, W) frames and comes out cropped and resized, uint8 (C, T, H, W)
(colour, blur, flip and normalisation run batched on the training device, xkd/data/video_finish.py);
audio leaves the loader as the float32 waveform window (its log-mels are computed on the training
device, xkd/data/audio_finish.py).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from xkd.config import ViewsConfig
from xkd.data.video_finish import finish_video
from xkd.data.view_params import IDENTITY_COLOR, ClipViewParams, ColorJitter


def crop_resize(frames: torch.Tensor, box: np.ndarray, size: int) -> torch.Tensor:
    """Crop the relative box (top, left, bottom, right) of uint8 (T, C, H, W) frames and resize it
    to size x size (bilinear, antialiased); stays uint8."""
    height, width = frames.shape[-2:]
    top, left = round(float(box[0]) * height), round(float(box[1]) * width)
    crop_h = max(round(float(box[2]) * height) - top, 1)
    crop_w = max(round(float(box[3]) * width) - left, 1)
    return F.resized_crop(frames, top, left, crop_h, crop_w, [size, size],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)


def finish_view(frames: torch.Tensor, color: ColorJitter = IDENTITY_COLOR, flip: bool = False) -> torch.Tensor:
    """One uint8 (T, C, H, W) view -> normalised float32 (C, T, H, W): colour jitter, flip and ImageNet
    normalisation, by the batched ops the trainer applies (:func:`xkd.data.video_finish.finish_video`)."""
    view = frames.permute(1, 0, 2, 3)[None]
    factors = None if color == IDENTITY_COLOR else torch.from_numpy(color.as_array())[None]
    return finish_video(view, factors, torch.tensor([flip]))[0]


class VideoCrops(NamedTuple):
    """The crop parameters of one sample's video views (a :class:`ClipViewParams` has the same fields)."""
    global_box: np.ndarray  # (4,) relative (top, left, bottom, right)
    local_offsets: np.ndarray  # (n_v,) frame offsets inside the global window
    local_boxes: np.ndarray  # (n_v, 4)


def global_video_view(frames: torch.Tensor, p: ClipViewParams | VideoCrops, views: ViewsConfig) -> torch.Tensor:
    """Global window frames (Tg, C, H, W) uint8 -> uint8 (3, Tg, S, S): crop + resize. Colour, flip
    and normalisation follow on the training device (:mod:`xkd.data.video_finish`). Both loaders
    (the DALI loader on the frames DALI decoded) cut their views with this and the next function."""
    return crop_resize(frames, p.global_box, views.video_global_size).permute(1, 0, 2, 3).contiguous()


def local_video_views(frames: torch.Tensor, p: ClipViewParams | VideoCrops, views: ViewsConfig) -> torch.Tensor:
    """Global window frames (Tg, C, H, W) uint8 -> uint8 (n_v, 3, Tl, s, s): for each local view, Tl
    consecutive frames at its offset, crop + resize. Colour (or grayscale), blur, flip and
    normalisation follow on the training device."""
    out = []
    for v in range(views.video_local_views):
        start = int(p.local_offsets[v])
        x = crop_resize(frames[start:start + views.video_local_frames], p.local_boxes[v], views.video_local_size)
        out.append(x.permute(1, 0, 2, 3))
    return torch.stack(out)
