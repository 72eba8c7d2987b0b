"""Audio-visual late fusion (spec section 6; paper A.5, Table 9: Kinetics-Sound).

The audio and the video feature of the same clip (clip i of an item covers the same time span in
both modalities, see :mod:`xkd.evaluation.clips`) are concatenated and classified by the linear SVM
protocol. Before concatenation each dimension is standardised with the training clips' statistics
and each modality's block is scaled by ``1 / sqrt(D_m)``, so that both modalities carry the same
total variance whatever their widths (ViT-L video 1024 + ViT-B audio 768 for AudioSet).
"""
from __future__ import annotations

import numpy as np

from xkd.evaluation.features import FeatureSet


def check_aligned(audio: FeatureSet, video: FeatureSet) -> None:
    if audio.keys != video.keys:
        raise ValueError("audio and video features cover different items (extract both on the same dataset)")
    if audio.features.shape[:2] != video.features.shape[:2]:
        raise ValueError(f"audio {audio.features.shape[:2]} and video {video.features.shape[:2]} features differ in "
                         "items or clips per item")
    for field in ("mode", "n_clips", "seed", "dataset_fingerprint"):
        if audio.identity.get(field) != video.identity.get(field):
            raise ValueError(f"audio and video features differ in {field}: "
                             f"{audio.identity.get(field)!r} vs {video.identity.get(field)!r}")
    if audio.identity["clip"]["seconds"] != video.identity["clip"]["seconds"]:
        raise ValueError("audio and video clips cover windows of different lengths; late fusion needs equal windows")


def fuse(train_blocks: list[np.ndarray], test_blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-modality (N, n, D_m) feature blocks after per-dimension standardisation with the
    training clips' statistics and a 1/sqrt(D_m) scale per block; returns (train, test) fused features."""
    train_out, test_out = [], []
    for train, test in zip(train_blocks, test_blocks, strict=True):
        flat = train.reshape(-1, train.shape[-1])
        mean, std = flat.mean(0), np.maximum(flat.std(0), 1e-6)
        scale = 1.0 / np.sqrt(train.shape[-1])
        train_out.append((train - mean) / std * scale)
        test_out.append((test - mean) / std * scale)
    return (np.concatenate(train_out, axis=-1).astype(np.float32),
            np.concatenate(test_out, axis=-1).astype(np.float32))
