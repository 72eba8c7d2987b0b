"""A loader batch -> the model's inputs, on the training device (docs/method.md §1.3).

Both loaders (DALI and PyTorch) stop at the work that needs the clip's bytes: the video decoded,
cropped and resized (uint8, in the decoder's colour space), the sound decoded (the float32
waveform of the 4 s window), plus every view's remaining parameters. :class:`BatchFinisher` does
the rest for the whole batch on the device the model trains on: the video's conversion to RGB,
colour, blur, flip and normalisation
(:mod:`xkd.data.video_finish`) and the audio's log-mels and spectrogram crops
(:mod:`xkd.data.audio_finish`). On a GPU that is a few batched kernels over tensors the model is
about to read; in a loader it was more than half of a sample's CPU cost (BENCHMARKS.md, issue 15).
"""
from __future__ import annotations

import torch
from torch import nn

from xkd.config import ViewsConfig
from xkd.data.audio_finish import AUDIO_PARAM_KEYS, finish_audio
from xkd.data.logmel import LogMel
from xkd.data.video_finish import VIDEO_PARAM_KEYS, finish_video

# The model's inputs (layout of xkd.models.xkd).
VIEW_KEYS = ("video_global", "video_local", "audio_global", "audio_local")
# What both loaders deliver: uint8 video views, the audio window, and the views' parameters.
LOADER_VIEW_KEYS = ("video_global", "video_local", "audio_window")
LOADER_KEYS = (*LOADER_VIEW_KEYS, *VIDEO_PARAM_KEYS, *AUDIO_PARAM_KEYS)


class BatchFinisher(nn.Module):
    """``finisher(batch)``: a loader batch (``LOADER_KEYS``) -> the model's inputs (``VIEW_KEYS``,
    float32) on the device this module was moved to (``.to(device)``)."""

    def __init__(self, views: ViewsConfig):
        super().__init__()
        self.logmel = LogMel(views)
        self.local_samples = int(round(views.audio_local_seconds * views.audio_sample_rate))

    @property
    def device(self) -> torch.device:
        return next(self.logmel.buffers()).device

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.device
        moved = {key: batch[key].to(device, non_blocking=True) for key in LOADER_KEYS}
        local = moved["video_local"]
        b, n = local.shape[:2]
        rgb_matrix = moved["video_to_rgb"]  # (B, 3, 4): a sample's global and local views share it
        audio_global, audio_local = finish_audio(
            moved["audio_window"].float(), moved["audio_global_gain"], moved["audio_local_offset"],
            moved["audio_local_gain"], moved["audio_local_box"], self.logmel, self.local_samples)
        return {
            "video_global": finish_video(moved["video_global"], moved["video_global_color"],
                                         moved["video_global_flip"], rgb_matrix=rgb_matrix),
            "video_local": finish_video(local.flatten(0, 1), moved["video_local_color"].flatten(0, 1),
                                        moved["video_local_flip"].flatten(0, 1),
                                        moved["video_local_blur"].flatten(0, 1),
                                        rgb_matrix.repeat_interleave(n, dim=0)).unflatten(0, (b, n)),
            "audio_global": audio_global,
            "audio_local": audio_local,
        }
