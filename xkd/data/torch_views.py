"""Per-view tensor operations of both loaders (docs/method.md §1): the PyTorch loader on the frames
PyAV decoded, the DALI loader on the frames DALI decoded (torchvision's uint8 resize is several
times cheaper on a CPU than DALI's CPU ``resize``; BENCHMARKS.md, issue 15).

Each function applies one clip's :class:`~xkd.data.view_params.ClipViewParams` (drawn once per
(seed, epoch, sample)) to decoded frames or to an audio window; no randomness is drawn here.
Video goes in as the decoder's planes (uint8 (T, C_i, H_i, W_i) each: YUV luma and chroma from
PyAV, whose chroma may have half the luma's size, or one RGB group from DALI's decoders) and comes
out cropped and resized, uint8 (3, T, S, S), in the planes' colour space (the conversion to RGB,
colour, blur, flip and normalisation run batched on the training device, xkd/data/video_finish.py);
audio leaves the loader as the float32 waveform window (its log-mels are computed on the training
device, xkd/data/audio_finish.py).
"""
from __future__ import annotations

from collections.abc import Sequence
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


# The loaders' crop edges lie on even pixels: the chroma grid of 4:2:0 video, whether the decoder
# delivers its planes (PyAV) or RGB (DALI, NVDEC), so a sample's views are the same crops either way.
CROP_GRID = 2


def crop_planes(planes: Sequence[torch.Tensor], box: np.ndarray, size: int, grid: int = CROP_GRID) -> torch.Tensor:
    """The relative box (top, left, bottom, right) of each plane group (T, C_i, H_i, W_i), resized to
    size x size and stacked on channels: uint8 (T, sum C_i, S, S); one group for RGB frames.

    The box is placed on the first (luma or RGB) plane's pixels with its edges on multiples of
    ``grid`` and of the most subsampled plane's factor (even rows and columns for 4:2:0), so every
    plane crops exactly the same picture (a box rounded on each plane's own pixels could be a luma
    pixel off in the chroma); the resize upsamples the chroma, never a step of its own."""
    height, width = planes[0].shape[-2:]
    # Subsampling factor of each plane (4:2:0 chroma: 2; odd sizes round, e.g. 97 rows -> 49)
    factors = [(round(height / plane.shape[-2]), round(width / plane.shape[-1])) for plane in planes]
    grid_y, grid_x = max(grid, *(f for f, _ in factors)), max(grid, *(f for _, f in factors))
    top, bottom = (grid_y * (round(float(box[i]) * height) // grid_y) for i in (0, 2))
    left, right = (grid_x * (round(float(box[i]) * width) // grid_x) for i in (1, 3))
    # At least one grid cell, inside the frame (an odd size's last row or column is left out).
    last_y, last_x = grid_y * (height // grid_y), grid_x * (width // grid_x)
    top, left = min(top, last_y - grid_y), min(left, last_x - grid_x)
    bottom, right = min(max(bottom, top + grid_y), last_y), min(max(right, left + grid_x), last_x)
    out = []
    for plane, (fy, fx) in zip(planes, factors):
        out.append(F.resized_crop(plane, top // fy, left // fx, (bottom - top) // fy, (right - left) // fx,
                                  [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True))
    return torch.cat(out, dim=1)


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


def global_video_view(planes: Sequence[torch.Tensor], p: ClipViewParams | VideoCrops, views: ViewsConfig
                      ) -> torch.Tensor:
    """The global window's planes (Tg frames each) -> uint8 (3, Tg, S, S): crop + resize. The
    conversion to RGB, colour, flip and normalisation follow on the training device
    (:mod:`xkd.data.video_finish`). Both loaders cut their views with this and the next function."""
    return crop_planes(planes, p.global_box, views.video_global_size).permute(1, 0, 2, 3).contiguous()


def local_video_views(planes: Sequence[torch.Tensor], p: ClipViewParams | VideoCrops, views: ViewsConfig
                      ) -> torch.Tensor:
    """The global window's planes (Tg frames each) -> uint8 (n_v, 3, Tl, s, s): for each local view,
    Tl consecutive frames at its offset, crop + resize. The conversion to RGB, colour (or
    grayscale), blur, flip and normalisation follow on the training device."""
    out = []
    for v in range(views.video_local_views):
        start = int(p.local_offsets[v])
        frames = [plane[start:start + views.video_local_frames] for plane in planes]
        out.append(crop_planes(frames, p.local_boxes[v], views.video_local_size).permute(1, 0, 2, 3))
    return torch.stack(out)
