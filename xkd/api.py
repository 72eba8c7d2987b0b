"""Embeddings from an exported encoder, for people who want features, not a training system.

    import xkd
    model, preprocess = xkd.load_encoder("runs/k400_ms/export/step00100000", "audio")
    features = model(preprocess(waveform)).pooled()          # (1, D): mean of last-layer patch tokens

``preprocess`` turns one raw clip into the encoder's input batch, as evaluation does (docs/method.md
§6): audio, a mono float waveform ``(samples,)`` at the training sample rate (16 kHz), into the
normalised log-mel ``(1, 1, 80, frames)``; video, uint8 frames ``(T, H, W, 3)`` (or ``(T, 3, H, W)``)
at the training frame rate (8 fps), into the centre square resized to the training view size and
ImageNet-normalised, ``(1, 3, T, S, S)``. ``T`` and the audio length must tile into the encoder's
patches (e.g. 16 frames / 2 s for the tiny config, 32 frames / 4 s for the paper configs).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from xkd.engine.export import export_config
from xkd.engine.export import load_encoder as _load_exported

MODALITIES = ("video", "audio")
ENCODERS = ("teacher", "student")


def load_encoder(export_dir: str | Path, modality: str, encoder: str = "teacher",
                 device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The exported ``modality`` encoder (eval mode, on ``device``) and its preprocessing (module docstring)."""
    if modality not in MODALITIES or encoder not in ENCODERS:
        raise ValueError(f"modality {modality!r} / encoder {encoder!r}: expected one of {MODALITIES} / {ENCODERS}")
    config = export_config(export_dir)
    model = _load_exported(Path(export_dir), f"{modality}_{encoder}_encoder").to(device)
    views = config.views
    if modality == "audio":
        from xkd.data.logmel import LogMel

        logmel = LogMel(views)

        def preprocess(waveform: torch.Tensor) -> torch.Tensor:
            return logmel(torch.as_tensor(waveform, dtype=torch.float32).reshape(-1))[None, None].to(device)
    else:
        from xkd.evaluation.clips import video_test_view

        def preprocess(frames: torch.Tensor) -> torch.Tensor:
            frames = torch.as_tensor(frames)
            if frames.shape[-1] == 3 and frames.shape[1] != 3:  # (T, H, W, 3) -> (T, 3, H, W)
                frames = frames.permute(0, 3, 1, 2)
            return video_test_view(frames.to(torch.uint8), views.video_global_size)[None].to(device)
    return model, preprocess
