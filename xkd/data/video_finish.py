"""The last video augmentations, batched on the training device (docs/method.md §1.3).

The views come from :mod:`xkd.data.video_crops` (cut on the same device from the uint8 windows
the loaders deliver), in their decoder's colour space (YUV from PyAV, RGB from DALI's decoders),
with each sample's YUV -> RGB matrix and each view's colour jitter, flip and blur parameters.
:func:`finish_video` then applies, to the whole batch at once and on the device the model trains
on: the conversion to RGB, brightness, contrast, saturation, hue (grayscale
where the saturation is 0), Gaussian blur, horizontal flip and ImageNet normalisation, in this
order.

These were most of a sample's CPU cost in the loaders (BENCHMARKS.md, "Colour on the
device"); on a GPU they are a few batched kernels. torchvision's functional ops take one factor
per call, so the batched ops are written here with one factor per view; they follow
torchvision's definitions (tests/test_video_finish.py checks each against torchvision, view by
view): contrast blends with each frame's grayscale mean, hue rotates in HSV.

Layouts: a view batch is (N, C, T, H, W); colours are (N, 4) rows of (brightness, contrast,
saturation, hue) as :meth:`~xkd.data.view_params.ColorJitter.as_array`; colour-space matrices
are (N, 3, 4) rows of :func:`xkd.data.video_decode.yuv_to_rgb_matrix`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf

from xkd.data.view_params import BLUR_SIGMA_MAX, ClipViewParams

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
# One kernel size for every view: taps beyond a view's own 2 * ceil(3 sigma) + 1 weigh 0.
BLUR_RADIUS = math.ceil(3 * BLUR_SIGMA_MAX)

# Per-sample parameters the loaders deliver beside the video windows ("video_to_rgb": the (3, 4)
# matrix of the sample's decoded colour space, shared by its global and local views).
VIDEO_PARAM_KEYS = ("video_to_rgb", "video_global_color", "video_global_flip", "video_local_color",
                    "video_local_flip", "video_local_blur")


def video_param_tensors(params: ClipViewParams, to_rgb: np.ndarray) -> dict[str, torch.Tensor]:
    """One sample's finishing parameters (the loaders' ``VIDEO_PARAM_KEYS`` entries); ``to_rgb``: the
    (3, 4) matrix of its decoded frames' colour space."""
    return {
        "video_to_rgb": torch.from_numpy(np.asarray(to_rgb, dtype=np.float32)),
        "video_global_color": torch.from_numpy(params.global_color.as_array()),
        "video_global_flip": torch.tensor(bool(params.global_flip)),
        "video_local_color": torch.from_numpy(np.stack([color.as_array() for color in params.local_colors])),
        "video_local_flip": torch.from_numpy(params.local_flips.astype(bool)),
        "video_local_blur": torch.from_numpy(params.local_blur_sigmas.astype("float32")),
    }


def _per_view(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) factors shaped to broadcast over (N, C, T, H, W)."""
    return values.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, ...) -> (N, 1, ...) luma."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def to_rgb(views: torch.Tensor, matrix: torch.Tensor | None) -> torch.Tensor:
    """Views (N, 3, T, H, W) of channel values in 0..255 (uint8, or the crops' floats) -> RGB floats
    in [0, 1] by each view's (3, 4) affine matrix on
    (channel values in [0, 255], 1) (None: the views are RGB already)."""
    x = views.float()
    if matrix is None:
        return x / 255.0
    matrix = matrix.to(device=views.device, dtype=x.dtype)
    rgb = torch.einsum("nrc,ncthw->nrthw", matrix[:, :, :3], x) + matrix[:, :, 3, None, None, None]
    return rgb.clamp(0, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, ...) RGB in [0, 1] -> HSV with hue as a fraction of the circle."""
    r, g, b = x.unbind(1)
    value, _ = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    grey = chroma == 0
    saturation = chroma / torch.where(value == 0, torch.ones_like(value), value)
    safe_chroma = torch.where(grey, torch.ones_like(chroma), chroma)
    # Which channel is the maximum decides the hue's sector (red first, then green).
    hue = torch.where(value == r, (g - b) / safe_chroma,
                      torch.where(value == g, 2 + (b - r) / safe_chroma, 4 + (r - g) / safe_chroma))
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    return torch.stack([torch.remainder(hue / 6, 1.0), saturation, value], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`, in the closed form without sector lookups: channel n of
    (r, g, b) = (5, 3, 1) is v * (1 - s * clamp(min(k, 4 - k), 0, 1)), k = (n + 6 hue) mod 6."""
    hue, saturation, value = x.unbind(1)
    hue6 = hue * 6
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(hue6 + n, 6.0)
        channels.append(value * (1 - saturation * torch.minimum(k, 4 - k).clamp(0, 1)))
    return torch.stack(channels, dim=1)


def color_jitter(x: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation, hue with one (4,) row of factors per view, on [0, 1] floats
    (N, 3, T, H, W); a saturation of 0 marks a grayscale view (applied after the other three)."""
    brightness, contrast, saturation, hue = (_per_view(color[:, i], x) for i in range(4))
    x = (x * brightness).clamp(0, 1)
    frame_mean = grayscale(x).mean(dim=(1, 3, 4), keepdim=True)  # torchvision: per frame
    x = _blend(x, frame_mean, contrast)
    to_gray = saturation == 0
    x = _blend(x, grayscale(x), torch.where(to_gray, torch.ones_like(saturation), saturation))
    hsv = rgb_to_hsv(x)
    hsv = torch.cat([torch.remainder(hsv[:, :1] + hue, 1.0), hsv[:, 1:]], dim=1)
    x = hsv_to_rgb(hsv)
    return torch.where(to_gray, grayscale(x).expand_as(x), x)


def blur_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """(N,) sigmas -> (N, 2 * BLUR_RADIUS + 1) Gaussian taps, each view's 2 * ceil(3 sigma) + 1 of them
    non-zero and normalised (torchvision's kernel); sigma 0 gives the identity."""
    offsets = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=sigma.device, dtype=torch.float32)
    sigma = sigma.float()[:, None]
    radius = torch.ceil(3 * sigma)
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    taps = torch.exp(-0.5 * (offsets / safe) ** 2) * (offsets.abs() <= radius)
    identity = (offsets == 0).float().expand_as(taps)
    taps = torch.where(sigma > 0, taps, identity)
    return taps / taps.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each view (N, C, T, H, W) with its own sigma, reflect padding."""
    n, c, t, h, w = x.shape
    taps = blur_kernels(sigma).to(x.dtype)  # (N, K)
    planes = x.reshape(1, n * c * t, h, w)
    weight = taps.repeat_interleave(c * t, dim=0)  # one kernel per (view, channel, frame) plane
    planes = nnf.pad(planes, (BLUR_RADIUS,) * 4, mode="reflect")
    planes = nnf.conv2d(planes, weight[:, None, None, :], groups=n * c * t)
    planes = nnf.conv2d(planes, weight[:, None, :, None], groups=n * c * t)
    return planes.reshape(n, c, t, h, w)


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1, 1)
    return (x - mean) / std


def finish_video(views: torch.Tensor, color: torch.Tensor | None, flip: torch.Tensor,
                 blur: torch.Tensor | None = None, rgb_matrix: torch.Tensor | None = None) -> torch.Tensor:
    """Views (N, 3, T, H, W), values 0..255 -> normalised float32: conversion to RGB by ``rgb_matrix`` (N, 3, 4)
    (None: RGB views), colour jitter, blur, flip, normalisation (``color`` / ``blur`` None: none)."""
    x = to_rgb(views, rgb_matrix)
    if color is not None:
        x = color_jitter(x, color.to(views.device))
    if blur is not None:
        x = gaussian_blur(x, blur.to(views.device))
    flip = flip.to(views.device).reshape(-1, *([1] * (x.dim() - 1)))
    return normalise(torch.where(flip, x.flip(-1), x))
