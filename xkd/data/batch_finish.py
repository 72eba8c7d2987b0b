"""A loader batch -> the model's inputs, on the training device (docs/method.md §1.3).

Both loaders (DALI and PyTorch) stop at the work that needs the clip's bytes: each clip's video
window decoded (its uint8 plane groups in the decoder's colour space, padded to the batch's
largest frame), the sound decoded (the float32 waveform of the 4 s window), plus every view's
parameters. :class:`BatchFinisher` does the rest for the whole batch on the device the model
trains on: the video views' crops and resizes (:mod:`xkd.data.video_crops`), their conversion to
RGB, colour, blur, flip and normalisation (:mod:`xkd.data.video_finish`), and the audio's
log-mels and spectrogram crops (:mod:`xkd.data.audio_finish`). On a GPU that is a few batched
kernels over tensors the model is about to read; in a loader it was three quarters of a sample's
CPU cost (BENCHMARKS.md, issue 15).
"""
from __future__ import annotations

import torch
from torch import nn

from xkd.config import ViewsConfig
from xkd.data.audio_finish import AUDIO_PARAM_KEYS, finish_audio
from xkd.data.logmel import LogMel
from xkd.data.video_crops import VIDEO_CROP_KEYS, crop_video_views, plane_keys
from xkd.data.video_finish import VIDEO_PARAM_KEYS, finish_video

# The model's inputs (layout of xkd.models.xkd).
VIEW_KEYS = ("video_global", "video_local", "audio_global", "audio_local")
# What both loaders deliver per sample (a clip's k samples next to each other): the audio window and
# the views' parameters. Per clip they deliver its window's plane groups and "video_plane_size".
SAMPLE_KEYS = ("audio_window", *VIDEO_CROP_KEYS, *VIDEO_PARAM_KEYS, *AUDIO_PARAM_KEYS)


def loader_keys(batch: dict) -> tuple[str, ...]:
    """Every tensor key of a loader batch: the clips' plane groups (YUV or RGB), their sizes, and
    ``SAMPLE_KEYS``."""
    return (*plane_keys(batch), "video_plane_size", *SAMPLE_KEYS)


def cut_video_views(batch: dict[str, torch.Tensor], views: ViewsConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch's video views, cut where its tensors are (:func:`~xkd.data.video_crops.crop_video_views`):
    float32 (0..255, the decoder's colour space) video_global (B, 3, Tg, S, S) and video_local
    (B, n_v, 3, Tl, s, s)."""
    return crop_video_views([batch[key] for key in plane_keys(batch)], batch["video_plane_size"],
                            batch["video_global_box"], batch["video_local_offset"], batch["video_local_box"],
                            views.video_global_size, views.video_local_size, views.video_local_frames)


class BatchFinisher(nn.Module):
    """``finisher(batch)``: a loader batch (``loader_keys``) -> the model's inputs (``VIEW_KEYS``,
    float32) on the device this module was moved to (``.to(device)``)."""

    def __init__(self, views: ViewsConfig):
        super().__init__()
        self.views = views
        self.logmel = LogMel(views)
        self.local_samples = int(round(views.audio_local_seconds * views.audio_sample_rate))

    @property
    def device(self) -> torch.device:
        return next(self.logmel.buffers()).device

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.device
        moved = {key: batch[key].to(device, non_blocking=True) for key in loader_keys(batch)}
        video_global, local = cut_video_views(moved, self.views)
        b, n = local.shape[:2]
        rgb_matrix = moved["video_to_rgb"]  # (B, 3, 4): a sample's global and local views share it
        audio_global, audio_local = finish_audio(
            moved["audio_window"].float(), moved["audio_global_gain"], moved["audio_local_offset"],
            moved["audio_local_gain"], moved["audio_local_box"], self.logmel, self.local_samples)
        return {
            "video_global": finish_video(video_global, moved["video_global_color"],
                                         moved["video_global_flip"], rgb_matrix=rgb_matrix),
            "video_local": finish_video(local.flatten(0, 1), moved["video_local_color"].flatten(0, 1),
                                        moved["video_local_flip"].flatten(0, 1),
                                        moved["video_local_blur"].flatten(0, 1),
                                        rgb_matrix.repeat_interleave(n, dim=0)).unflatten(0, (b, n)),
            "audio_global": audio_global,
            "audio_local": audio_local,
        }
