"""Per-view tensor operations of the PyTorch loader (docs/method.md §1).

Each function applies one clip's :class:`~xkd.data.view_params.ClipViewParams` (drawn once per
(seed, epoch, sample)) to decoded frames or to an audio window; no randomness is drawn here.
Video goes in as uint8 (T, C, H, W) frames and comes out normalised (C, T, H, W) float32;
audio goes in as a float32 waveform window and comes out as a normalised log-mel spectrogram.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from xkd.config import ViewsConfig
from xkd.data.logmel import LogMel
from xkd.data.view_params import ClipViewParams, ColorJitter

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def crop_resize(frames: torch.Tensor, box: np.ndarray, size: int) -> torch.Tensor:
    """Crop the relative box (top, left, bottom, right) of uint8 (T, C, H, W) frames and resize it
    to size x size (bilinear, antialiased); returns float32 in [0, 1]."""
    height, width = frames.shape[-2:]
    top, left = round(float(box[0]) * height), round(float(box[1]) * width)
    crop_h = max(round(float(box[2]) * height) - top, 1)
    crop_w = max(round(float(box[3]) * width) - left, 1)
    out = F.resized_crop(frames, top, left, crop_h, crop_w, [size, size],
                         interpolation=InterpolationMode.BILINEAR, antialias=True)
    return out.float() / 255.0


def color_jitter(x: torch.Tensor, color: ColorJitter) -> torch.Tensor:
    """Brightness, contrast, saturation, hue in this fixed order on [0, 1] floats;
    saturation 0 marks a grayscale view (3 equal channels, applied after the other three)."""
    x = F.adjust_brightness(x, color.brightness)
    x = F.adjust_contrast(x, color.contrast)
    if color.saturation > 0:
        x = F.adjust_saturation(x, color.saturation)
    x = F.adjust_hue(x, color.hue)
    if color.saturation == 0:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    return x


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with kernel size 2 * ceil(3 sigma) + 1."""
    kernel = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def finish(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Optional horizontal flip, ImageNet normalisation, (T, C, H, W) -> (C, T, H, W)."""
    if flip:
        x = F.horizontal_flip(x)
    x = F.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    return x.permute(1, 0, 2, 3).contiguous()


def global_video_view(frames: torch.Tensor, p: ClipViewParams, views: ViewsConfig) -> torch.Tensor:
    """Global window frames (Tg, C, H, W) uint8 -> (3, Tg, S, S): crop + resize, jitter, flip."""
    x = crop_resize(frames, p.global_box, views.video_global_size)
    return finish(color_jitter(x, p.global_color), p.global_flip)


def local_video_views(frames: torch.Tensor, p: ClipViewParams, views: ViewsConfig) -> torch.Tensor:
    """Global window frames (Tg, C, H, W) uint8 -> (n_v, 3, Tl, s, s): for each local view, Tl
    consecutive frames at its offset, crop + resize, jitter (or grayscale), blur, flip."""
    out = []
    for v in range(views.video_local_views):
        start = int(p.local_offsets[v])
        x = crop_resize(frames[start:start + views.video_local_frames], p.local_boxes[v], views.video_local_size)
        x = color_jitter(x, p.local_colors[v])
        if p.local_blur_sigmas[v] > 0:
            x = gaussian_blur(x, float(p.local_blur_sigmas[v]))
        out.append(finish(x, bool(p.local_flips[v])))
    return torch.stack(out)


def crop_spectrogram(spec: torch.Tensor, box: np.ndarray) -> torch.Tensor:
    """Random resize crop of a (F, T) log-mel: take the box (f0, t0, f1, t1), zero padded where it
    reaches outside (0 is the mean of the normalised log-mel), and resize it back to (F, T) with
    bicubic interpolation. Returns (1, F, T)."""
    bins, frames = spec.shape
    f0, t0, f1, t1 = (int(round(float(b))) for b in box)
    pad_f, pad_t = max(0, -f0), max(0, -t0)
    padded = nnf.pad(spec, (pad_t, max(0, t1 - frames), pad_f, max(0, f1 - bins)))
    crop = padded[f0 + pad_f:f1 + pad_f, t0 + pad_t:t1 + pad_t]
    return nnf.interpolate(crop[None, None], size=(bins, frames), mode="bicubic", align_corners=False)[0]


def global_audio_view(window: torch.Tensor, p: ClipViewParams, logmel: LogMel) -> torch.Tensor:
    """Raw global window (N_global,) -> (1, mel_bins, frames_g): volume jitter, log-mel."""
    return logmel((window * p.audio_gain)[None])


def local_audio_views(window: torch.Tensor, p: ClipViewParams, views: ViewsConfig, logmel: LogMel) -> torch.Tensor:
    """Raw global window (N_global,) -> (n_a, 1, mel_bins, frames_l): for each local view, the
    1 s segment at its offset (taken before the global gain), its own gain, log-mel, resize crop."""
    length = int(round(views.audio_local_seconds * views.audio_sample_rate))
    segments = torch.stack([window[int(o):int(o) + length] * float(g)
                            for o, g in zip(p.audio_local_offsets, p.audio_local_gains)])
    specs = logmel(segments)
    return torch.stack([crop_spectrogram(spec, box) for spec, box in zip(specs, p.audio_local_boxes)])
