"""The audio views, batched on the training device (docs/method.md §1.2-1.3).

Both loaders stop at the decoded sound: each sample's 4 s window as a float32 waveform, its
gains, its local views' offsets and its spectrogram crop boxes. :func:`finish_audio` then
computes, for the whole batch on the device the model trains on:

* the global view: log-mel of the window times its gain;
* each local view: the 1 s segment at its offset times its own gain, log-mel, and the BYOL-A
  random resize crop (:func:`crop_spectrogram`; for the batch, :func:`crop_spectrograms`: one
  bicubic resize as two matrix products per view, no per-view kernel launches).

The log-mels and crops cost a DALI sample 2-5 ms of CPU (BENCHMARKS.md, "Audio and video crops
off DALI's graph"); on an accelerator they are a few batched kernels. Both loaders thus share one
log-mel and one crop, where DALI's and torch's used to differ by interpolation details.

Layouts: ``window`` (B, N) float32; ``gain`` (B,); ``local_offset`` (B, n_a) int64 samples;
``local_gain`` (B, n_a); ``local_box`` (B, n_a, 4) (f0, t0, f1, t1) in spectrogram bins/frames.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf

from xkd.data.logmel import LogMel
from xkd.data.view_params import ClipViewParams

# Per-sample audio parameters the loaders deliver beside the window.
AUDIO_PARAM_KEYS = ("audio_global_gain", "audio_local_offset", "audio_local_gain", "audio_local_box")


def audio_param_tensors(params: ClipViewParams) -> dict[str, torch.Tensor]:
    """One sample's audio view parameters (the loaders' ``AUDIO_PARAM_KEYS`` entries)."""
    return {
        "audio_global_gain": torch.tensor(float(params.audio_gain), dtype=torch.float32),
        "audio_local_offset": torch.from_numpy(np.asarray(params.audio_local_offsets, dtype=np.int64)),
        "audio_local_gain": torch.from_numpy(np.asarray(params.audio_local_gains, dtype=np.float32)),
        "audio_local_box": torch.from_numpy(np.asarray(params.audio_local_boxes, dtype=np.float32)),
    }


def crop_spectrogram(spec: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """BYOL-A random resize crop of one (F, T) log-mel: the box (f0, t0, f1, t1), zero padded where
    it reaches outside (0 is the mean of the normalised log-mel), resized back to (F, T) with
    bicubic interpolation, corners aligned (the reference code's choice). Returns (1, F, T).

    The definition, one view at a time; the batch uses :func:`crop_spectrograms`, equal to it."""
    bins, frames = spec.shape
    f0, t0, f1, t1 = box
    pad_f, pad_t = max(0, -f0), max(0, -t0)
    padded = nnf.pad(spec, (pad_t, max(0, t1 - frames), pad_f, max(0, f1 - bins)))
    crop = padded[f0 + pad_f:f1 + pad_f, t0 + pad_t:t1 + pad_t]
    return nnf.interpolate(crop[None, None], size=(bins, frames), mode="bicubic", align_corners=True)[0]


def _cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution (a = -0.75, PyTorch's bicubic) at the taps -1, 0, 1, 2 around a
    sample at fraction ``t`` past tap 0: (..., 4)."""
    a = -0.75
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)


def resize_matrices(start: torch.Tensor, stop: torch.Tensor, size: int) -> torch.Tensor:
    """Per view, the (size, size) matrix M with ``M @ x`` = the span [start, stop) of a length-``size``
    signal x (zero outside it) resized to ``size`` samples by ``crop_spectrogram``'s bicubic
    interpolation: taps clamped to the span (PyTorch's border rule), corners aligned.
    ``start``, ``stop``: (N,) int64 -> (N, size, size) float32."""
    length = stop - start  # (N,)
    scale = (length - 1).float() / max(size - 1, 1)
    source = scale[:, None] * torch.arange(size, device=start.device, dtype=torch.float32)  # (N, size)
    base = source.floor()
    weights = _cubic_weights(source - base)  # (N, size, 4)
    taps = base.long()[..., None] + torch.arange(-1, 3, device=start.device)  # in the span's coordinates
    taps = torch.minimum(taps.clamp(min=0), (length - 1)[:, None, None]) + start[:, None, None]
    inside = (taps >= 0) & (taps < size)  # taps in the padding read zeros
    matrix = torch.zeros(len(start), size, size, device=start.device, dtype=torch.float32)
    return matrix.scatter_add_(2, taps.clamp(0, size - 1), weights * inside)


def crop_spectrograms(specs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """:func:`crop_spectrogram` for a batch of views in two matrix products (the resize is separable):
    ``specs`` (N, F, T), ``boxes`` (N, 4) integer-valued (f0, t0, f1, t1) -> (N, 1, F, T)."""
    boxes = boxes.to(specs.device).round().long()
    rows = resize_matrices(boxes[:, 0], boxes[:, 2], specs.shape[1])  # (N, F, F)
    columns = resize_matrices(boxes[:, 1], boxes[:, 3], specs.shape[2])  # (N, T, T)
    return (rows @ specs.float() @ columns.transpose(1, 2)).unsqueeze(1)


def local_segments(window: torch.Tensor, offsets: torch.Tensor, length: int) -> torch.Tensor:
    """(B, N) windows, (B, n) offsets -> (B, n, length): each local view's samples."""
    index = offsets[..., None] + torch.arange(length, device=window.device)
    return window[:, None, :].expand(-1, offsets.shape[1], -1).gather(2, index)


def finish_audio(window: torch.Tensor, gain: torch.Tensor, local_offset: torch.Tensor, local_gain: torch.Tensor,
                 local_box: torch.Tensor, logmel: LogMel, local_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows and their parameters -> (audio_global (B, 1, F, Tg), audio_local (B, n_a, 1, F, Tl))."""
    device = window.device
    audio_global = logmel(window * gain.to(device)[:, None]).unsqueeze(1)
    segments = local_segments(window, local_offset.to(device), local_samples) * local_gain.to(device)[..., None]
    specs = logmel(segments)  # (B, n_a, F, Tl)
    audio_local = crop_spectrograms(specs.flatten(0, 1), local_box.flatten(0, 1)).unflatten(0, specs.shape[:2])
    return audio_global, audio_local
