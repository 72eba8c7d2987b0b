"""Audio-visual late fusion (docs/method.md §6; paper A.5, Table 9: Kinetics-Sound).

The audio and the video feature of the same clip (clip i of an item covers the same time span in
both modalities, see :mod:`xkd.evaluation.clips`) are concatenated and classified by the linear SVM
protocol. Before concatenation each dimension is standardised with the training clips' statistics
and each modality's block is scaled by ``1 / sqrt(D_m)``, so that both modalities carry the same
total variance whatever their widths (ViT-L video 1024 + ViT-B audio 768 for AudioSet).
"""
from __future__ import annotations

import numpy as np

from xkd.evaluation.datasets import DatasetError, LabeledDataset, require_modality
from xkd.evaluation.errors import EvalInputError
from xkd.evaluation.features import FeatureSet
from xkd.evaluation.protocol import ClipSpec


def check_windows(audio: ClipSpec, video: ClipSpec) -> None:
    """Clip i of both modalities must cover the same span: the video window (frames / fps) must
    equal the audio window. Checked from the options, before any feature is extracted."""
    if abs(video.frames / video.fps - audio.seconds) > 1e-6:
        raise EvalInputError(f"late fusion pairs audio and video clips of the same time span, but the video clip "
                             f"(--frames {video.frames} at --fps {video.fps}) covers {video.frames / video.fps:g} s "
                             f"and the audio clip (--seconds {audio.seconds:g}) {audio.seconds:g} s; "
                             f"make --frames / --fps equal --seconds")


def check_both_modalities(dataset: LabeledDataset, indices: np.ndarray) -> None:
    """Every item to fuse has a video and an audio track; checked before either is extracted."""
    for modality in ("video", "audio"):
        try:
            require_modality(dataset, indices, modality)
        except DatasetError as error:
            raise DatasetError(f"{error}; late fusion needs audio and video of every item") from None


def check_aligned(audio: FeatureSet, video: FeatureSet) -> None:
    """The two feature sets pair up clip by clip (same items in the same order, same clips)."""
    where = f"audio features {audio.path} and video features {video.path}"
    if audio.keys != video.keys:
        raise EvalInputError(f"{where} cover different items or orders ({len(audio.keys)} vs {len(video.keys)} "
                             "items; extract both on the same dataset and splits)")
    if audio.features.shape[:2] != video.features.shape[:2]:
        raise EvalInputError(f"{where} differ in items x clips: {audio.features.shape[:2]} vs "
                             f"{video.features.shape[:2]}")
    for field in ("mode", "n_clips", "seed", "dataset_fingerprint"):
        if audio.identity.get(field) != video.identity.get(field):
            raise EvalInputError(f"{where} differ in {field}: "
                                 f"{audio.identity.get(field)!r} vs {video.identity.get(field)!r}")
    if audio.identity["clip"]["seconds"] != video.identity["clip"]["seconds"]:
        raise EvalInputError(f"{where} cover windows of different lengths ({audio.identity['clip']['seconds']} s vs "
                             f"{video.identity['clip']['seconds']} s); late fusion needs equal windows")


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
