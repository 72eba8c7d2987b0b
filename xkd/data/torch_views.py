"""One view at a time, with torchvision (docs/method.md §1.3): the evaluation's crops
(:func:`crop_resize`, :func:`finish_view`) and the definition of the training views' crop
(:func:`crop_planes`), which :mod:`xkd.data.video_crops` computes for a whole batch on the
training device (tests/test_video_crops.py holds the two equal). No randomness is drawn here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from xkd.data.video_crops import CROP_GRID
from xkd.data.video_finish import finish_video
from xkd.data.view_params import IDENTITY_COLOR, ColorJitter


def crop_resize(frames: torch.Tensor, box: np.ndarray, size: int) -> torch.Tensor:
    """Crop the relative box (top, left, bottom, right) of uint8 (T, C, H, W) frames and resize it
    to size x size (bilinear, antialiased); stays uint8."""
    height, width = frames.shape[-2:]
    top, left = round(float(box[0]) * height), round(float(box[1]) * width)
    crop_h = max(round(float(box[2]) * height) - top, 1)
    crop_w = max(round(float(box[3]) * width) - left, 1)
    return F.resized_crop(frames, top, left, crop_h, crop_w, [size, size],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)


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
