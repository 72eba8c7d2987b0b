"""Frozen features of an exported encoder, cached on disk by checkpoint hash (docs/method.md §6).

The feature of a clip is the mean of the encoder's last-layer patch tokens after the final
LayerNorm (CLS excluded; ``EncoderOutput.pooled``, docs/method.md §3.1), of the **teacher** encoder by
default (``role="student"`` for the student). Features are computed for every item of a
dataset (splits then index into them), in batches, on the CPU or a GPU, and written to

    <cache_dir>/<dataset>-<encoder>-<mode><n>-<hash>.safetensors

where ``hash`` covers the encoder file's sha256, the dataset fingerprint (shard sha256s and
labels), the clip geometry, the augmentation, the seed, the clip count and the precision the
forward pass ran in (bf16/fp16 autocast on a GPU; fp32 otherwise). A second request
with the same identity loads the file and runs no forward pass, so a sweep over C, splits or
classifiers never recomputes features. Writes are atomic (temp file + rename).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from xkd.engine.export import encoder_sha256, export_config, load_encoder
from xkd.evaluation.clips import EvalClips
from xkd.distributed import resolve_device
from xkd.evaluation.datasets import LabeledDataset
from xkd.evaluation.protocol import ClipSpec, LinearAugment

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
FEATURE_KIND = "mean of last-layer patch tokens after the final LayerNorm (CLS excluded)"


@dataclass
class FeatureSet:
    """Features of items of a dataset: ``features[r, c]`` is clip c of the item with key ``keys[r]``."""

    features: np.ndarray  # (N, n_clips, D) float32
    keys: list[str]
    identity: dict
    path: Path
    forward_batches: int  # encoder forward passes run to make this set (0: loaded from the cache)

    @property
    def from_cache(self) -> bool:
        return self.forward_batches == 0

    def take(self, dataset: LabeledDataset, indices: np.ndarray) -> np.ndarray:
        """(len(indices), n_clips, D) features of dataset items ``indices``."""
        rows = {key: row for row, key in enumerate(self.keys)}
        try:
            return self.features[[rows[dataset.items[int(i)].key] for i in indices]]
        except KeyError as error:
            raise KeyError(f"item {error} has no features in {self.path} (extracted for other items)") from None


def feature_identity(export_dir: str | Path, name: str, dataset: LabeledDataset, spec: ClipSpec, mode: str,
                     n_clips: int, augment: LinearAugment | None, seed: int, keys: list[str],
                     precision: str = "fp32") -> dict:
    """What the cached features depend on; ``precision``: the one the forward pass ran in."""
    config = export_config(export_dir)
    identity = {
        "cache_format": CACHE_FORMAT, "feature": FEATURE_KIND, "encoder": name,
        "checkpoint_sha256": encoder_sha256(export_dir, name),
        "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "items": len(keys),
        "items_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
        "clip": spec.to_dict(), "mode": mode, "n_clips": n_clips,
        "augment": dataclasses.asdict(augment) if augment is not None else None,
        "seed": seed if augment is not None else None,
        "precision": precision,
        "logmel": {k: getattr(config.views, k) for k in ("audio_sample_rate", "n_fft", "hop_length", "mel_bins",
                                                       "mel_fmin", "mel_fmax", "mel_mean", "mel_std", "mel_log_eps")},
    }
    return json.loads(json.dumps(identity, sort_keys=True))  # tuples -> lists: comparable with the stored copy


def cache_path(cache_dir: str | Path, identity: dict) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in identity["dataset"])
    return Path(cache_dir) / f"{safe}-{identity['encoder']}-{identity['mode']}{identity['n_clips']}-{digest}.safetensors"


def _load_cached(path: Path, identity: dict) -> FeatureSet | None:
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
        if json.loads(meta.get("identity", "{}")) != identity:
            log.warning("%s: cached features of another identity; recomputing", path)
            return None
        arrays = load_numpy(str(path))
        return FeatureSet(arrays["features"], json.loads(meta["keys"]), identity, path, forward_batches=0)
    except Exception as error:  # a truncated or foreign file is recomputed, never trusted
        log.warning("%s: unreadable feature cache (%s); recomputing", path, error)
        return None


def _collate(batch: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(batch)


@torch.no_grad()
def encode_clips(encoder: nn.Module, clips: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """(B, ...) clips -> (B, D) pooled features in float32."""
    clips = clips.to(device, non_blocking=True)
    if dtype is not None and device.type == "cuda":
        with torch.autocast("cuda", dtype=dtype):
            return encoder(clips).pooled().float()
    return encoder(clips).pooled().float()


def extract_features(export_dir: str | Path, name: str, dataset: LabeledDataset, spec: ClipSpec, *, mode: str = "test",
                     n_clips: int = 3, augment: LinearAugment | None = None, seed: int = 0, batch_size: int = 64,
                     device: str = "auto", precision: str = "fp32", num_workers: int = 0,
                     cache_dir: str | Path | None = None, progress: bool = True,
                     encoder: nn.Module | None = None, indices: np.ndarray | None = None) -> FeatureSet:
    """Features of the items of ``dataset`` (all, or ``indices``), cached; see the module docstring.

    Args:
        name: exported encoder, e.g. ``audio_teacher_encoder`` (:func:`~xkd.evaluation.protocol.encoder_name`).
        mode: ``test`` (``n_clips`` uniform clips, no augmentation) or ``train`` (``n_clips`` random
            clips with ``augment``, default the linear-eval augmentation).
        batch_size: clips per forward pass (items are batched so that a batch holds about this many).
        precision: ``fp32`` or ``bf16`` (autocast, CUDA only; features are stored in fp32).
        cache_dir: default ``<export_dir>/features``.
        encoder: an already loaded encoder for ``name`` (its weights must be the exported ones).
        indices: dataset items to extract (default all), e.g. only the items of training splits.
    """
    if mode not in ("train", "test"):
        raise ValueError(f"mode {mode!r}: expected train or test")
    if mode == "train" and augment is None:
        augment = LinearAugment()
    if mode == "test":
        augment = None
    items = dataset.items if indices is None else [dataset.items[int(i)] for i in sorted(set(map(int, indices)))]
    keys = [item.key for item in items]
    if precision not in ("fp32", "tf32", "bf16", "fp16"):
        raise ValueError(f"precision {precision!r}: expected fp32, tf32, bf16 or fp16")
    target = resolve_device(device)
    from xkd.devices import computed_precision, require_precision, tf32_matmuls

    require_precision(precision, target, key="precision")
    capability = torch.cuda.get_device_capability(target) if target.type == "cuda" else None
    computed = computed_precision(precision, target.type, capability)  # autocast and TF32 act on CUDA only
    identity = feature_identity(export_dir, name, dataset, spec, mode, n_clips, augment, seed, keys, computed)
    path = cache_path(cache_dir or Path(export_dir) / "features", identity)
    cached = _load_cached(path, identity)
    if cached is not None:
        if cached.keys != keys:
            raise RuntimeError(f"{path}: cached keys differ from the dataset's although the identity matches")
        log.info("features from cache %s", path)
        return cached

    config = export_config(export_dir)
    views = spec.views(config.views)
    spec.check_tiles(config.model, views)
    model = (encoder if encoder is not None else load_encoder(Path(export_dir), name)).to(target).eval()
    dtype = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    clips = EvalClips(items, spec, views, n_clips, augment, seed)
    items_per_batch = max(1, batch_size // n_clips)
    loader = DataLoader(clips, batch_size=items_per_batch, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=target.type == "cuda", persistent_workers=False)
    out, batches = [], 0
    bar = tqdm(total=len(items), unit="item", desc=f"{name} {mode} features", disable=not progress,
               dynamic_ncols=True)
    with tf32_matmuls(computed == "tf32"):
        for batch in loader:  # (B, n, ...)
            b, n = batch.shape[:2]
            features = encode_clips(model, batch.flatten(0, 1), target, dtype)
            out.append(features.reshape(b, n, -1).cpu().numpy())
            batches += 1
            bar.update(b)
    bar.close()
    features = np.concatenate(out).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_numpy({"features": features}, str(tmp),
               metadata={"identity": json.dumps(identity, sort_keys=True), "keys": json.dumps(keys)})
    os.replace(tmp, path)
    log.info("wrote %s (%s)", path, features.shape)
    return FeatureSet(features, keys, identity, path, forward_batches=batches)
