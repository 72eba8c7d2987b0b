"""The audio views, batched on the training device (docs/method.md §1.2-1.3).

Both loaders stop at the decoded sound: each sample's 4 s window as a float32 waveform, its
gains, its local views' offsets and its spectrogram crop boxes. :func:`finish_audio` then
computes, for the whole batch on the device the model trains on:

* the global view: log-mel of the window times its gain;
* each local view: the 1 s segment at its offset times its own gain, log-mel, and the BYOL-A
  random resize crop (:func:`crop_spectrogram`).

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
    bicubic interpolation, corners aligned (the reference code's choice). Returns (1, F, T)."""
    bins, frames = spec.shape
    f0, t0, f1, t1 = box
    pad_f, pad_t = max(0, -f0), max(0, -t0)
    padded = nnf.pad(spec, (pad_t, max(0, t1 - frames), pad_f, max(0, f1 - bins)))
    crop = padded[f0 + pad_f:f1 + pad_f, t0 + pad_t:t1 + pad_t]
    return nnf.interpolate(crop[None, None], size=(bins, frames), mode="bicubic", align_corners=True)[0]


def local_segments(window: torch.Tensor, offsets: torch.Tensor, length: int) -> torch.Tensor:
    """(B, N) windows, (B, n) offsets -> (B, n, length): each local view's samples."""
    index = offsets[..., None] + torch.arange(length, device=window.device)
    return window[:, None, :].expand(-1, offsets.shape[1], -1).gather(2, index)


def finish_audio(window: torch.Tensor, gain: torch.Tensor, local_offset: torch.Tensor, local_gain: torch.Tensor,
                 local_box: torch.Tensor, logmel: LogMel, local_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows and their parameters -> (audio_global (B, 1, F, Tg), audio_local (B, n_a, 1, F, Tl)).

    The boxes are read on the host (one crop size per view: the crops are not batched)."""
    device = window.device
    audio_global = logmel(window * gain.to(device)[:, None]).unsqueeze(1)
    batch, n_local = local_offset.shape  # at least one local view (config validation)
    segments = local_segments(window, local_offset.to(device), local_samples) * local_gain.to(device)[..., None]
    specs = logmel(segments)
    boxes = local_box.round().to(torch.int64).tolist()
    audio_local = torch.stack([
        torch.stack([crop_spectrogram(specs[b, a], tuple(boxes[b][a])) for a in range(n_local)])
        for b in range(batch)])
    return audio_global, audio_local
