"""A periodic probe of the representation during pretraining (``probe:`` config section).

At step 0 (the random-init baseline, once) and every ``probe.every_steps`` steps, the current
encoders (teachers, optionally students) embed each labelled probe set with the evaluation
feature (mean of the last-layer patch tokens, ``docs/method.md`` §6) of fixed clips: the middle
window of the pretraining global view's length, no augmentation. Two scores per set, modality
and encoder, on the set's fixed train/test split:

* ``knn_top1``: weighted k-NN as DINO (Caron et al. 2021): cosine similarity of L2-normalised
  features, the k nearest train items vote for their class with weight exp(similarity / T);
* ``linear_top1``: a logistic regression (fixed C = 1, standardised features) fit on the train items.

Features are computed on every rank for its share of the items (``items[rank::world]``) and
gathered; rank 0 scores and broadcasts the numbers, so every rank leaves the probe together
(no collective waits long enough to time out) and logs the same values. The probe runs under
``torch.no_grad`` with the RNG forked and the encoders' train/eval modes restored: the training
trajectory is bitwise the same with the probe on or off.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from xkd.config import ProbeConfig, ProbeSet, XKDConfig
from xkd.evaluation.clips import EvalClips
from xkd.evaluation.datasets import load_dataset, read_split_spec, resolve_splits, require_modality
from xkd.evaluation.features import encode_clips
from xkd.evaluation.protocol import ClipSpec

log = logging.getLogger("xkd.train.probe")
ROOT = Path(__file__).resolve().parents[2]


class ProbeError(ValueError):
    """A probe set that cannot be used (names the config key and what was expected)."""


class MissingProbeData(ProbeError):
    """A probe set's shards are not there (yet): skipped with a warning; the probe is an auxiliary
    monitor and never stops a training run for want of its data."""


def knn_top1(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
             num_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted k-NN top-1 accuracy in percent (DINO's ``knn_classifier``; see the module docstring)."""
    train, test = nn.functional.normalize(train.double(), dim=1), nn.functional.normalize(test.double(), dim=1)
    similarity = test @ train.T  # (test, train) cosine
    k = min(k, train.shape[0])
    top, index = similarity.topk(k, dim=1)
    votes = torch.zeros(test.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_labels[index], (top / temperature).exp())
    return float((votes.argmax(dim=1) == test_labels).double().mean() * 100)


def linear_top1(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    """Top-1 (percent) of a logistic regression on standardised features (fixed C = 1, lbfgs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(train_labels.tolist())) < 2:
        return float(np.mean(test_labels == train_labels[0]) * 100)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    model.fit(train.astype(np.float64), train_labels)
    return float(np.mean(model.predict(test.astype(np.float64)) == test_labels) * 100)


def fixed_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train / test indices: within each class (in item order) every second item is a test item."""
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test[members[1::2]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def resolve_path(path: str) -> str:
    """Relative paths: from the working directory, else from the repository root (as data.shards)."""
    if not Path(path).is_absolute() and not Path(path).exists() and (ROOT / path).exists():
        return str(ROOT / path)
    return path


@dataclass
class PreparedSet:
    """One probe set ready to embed: its items, the fixed split and the clip geometry."""

    config: ProbeSet
    dataset: object  # LabeledDataset
    labels: np.ndarray  # (N,) class index per item
    train: np.ndarray
    test: np.ndarray
    spec: ClipSpec
    views: object  # ViewsConfig


def prepare_set(probe_set: ProbeSet, config: XKDConfig, key: str) -> PreparedSet:
    """Load a probe set and its split; raise :class:`ProbeError` naming ``key`` when it cannot be used."""
    from xkd.evaluation.errors import EvalInputError

    data = resolve_path(probe_set.data)
    if not Path(data).is_dir():
        raise MissingProbeData(f"{key}.data: {probe_set.data}: no such shard directory (expected shards made by "
                               "data_prep/make_shards.py; the bundled sound set: bash scripts/make_sound_shards.sh); "
                               "the probe skips this set (probe.every_steps=0 turns the probe off)")
    try:
        dataset = load_dataset([data], [resolve_path(p) for p in probe_set.labels] or None, name=probe_set.name)
        if dataset.multi_label:
            raise ProbeError(f"{key}: {probe_set.data} is multi-label; the probe scores single-label sets")
        labels = dataset.targets()
        if probe_set.splits:
            kind, _, path = probe_set.splits.partition(":")
            split = resolve_splits(dataset, read_split_spec(f"{kind}:{resolve_path(path)}" if path else kind))[0]
            train, test = np.asarray(split.train), np.asarray(split.test)
        else:
            train, test = fixed_split(labels)
        require_modality(dataset, np.concatenate([train, test]), probe_set.modality)
    except EvalInputError as error:
        raise ProbeError(f"{key}: {error}") from None
    if len(train) == 0 or len(test) == 0:
        raise ProbeError(f"{key}: the split has {len(train)} train and {len(test)} test items; expected both > 0")
    v = config.views
    if probe_set.modality == "video":
        spec = ClipSpec("video", frames=v.video_global_frames, size=v.video_global_size, fps=v.video_fps,
                        seconds=v.video_global_frames / v.video_fps)
    else:
        spec = ClipSpec("audio", seconds=v.audio_global_seconds)
    views = spec.views(v)
    spec.check_tiles(config.model, views)
    return PreparedSet(probe_set, dataset, labels, train, test, spec, views)


def load_sets(config: XKDConfig, warn: bool = True) -> list[PreparedSet]:
    """The usable probe sets; a set whose shards are missing is skipped with a warning, any other
    problem raises :class:`ProbeError`."""
    sets = []
    for i, probe_set in enumerate(config.probe.sets):
        try:
            sets.append(prepare_set(probe_set, config, f"probe.sets[{i}]"))
        except MissingProbeData as missing:
            if warn:
                log.warning("%s", missing)
    return sets


CLIP_CACHE_BYTES = 512 * 2**20


class _LazyClips:
    """Clips decoded on access (a set too large to keep in memory)."""

    def __init__(self, source: EvalClips):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.source[i]


class Probe:
    """Embeds and scores the probe sets; ``run`` is collective (every rank calls it at the same steps)."""

    def __init__(self, config: XKDConfig, rank: int, world_size: int, device: torch.device):
        self.config: ProbeConfig = config.probe
        self.rank, self.world_size, self.device = rank, world_size, device
        self.sets = load_sets(config, warn=rank == 0)
        self.seconds = 0.0  # time spent probing in this process (for the budget)
        # Decoded clips of this rank's items per set, kept when small (they never change: no augmentation).
        self.clips: dict[str, list[torch.Tensor]] = {}

    def due(self, step: int) -> bool:
        return bool(self.sets) and bool(self.config.every_steps) and step % self.config.every_steps == 0

    def run(self, encoders: dict[str, dict[str, nn.Module]], step: int) -> dict[str, float]:
        """``encoders``: role ("teacher", "student") -> modality -> encoder. Returns the metrics on every rank."""
        started = time.perf_counter()
        forked = [self.device] if self.device.type == "cuda" else []
        scores: dict[str, float] = {}
        with torch.random.fork_rng(devices=forked), torch.no_grad():
            for prepared in self.sets:
                modality = prepared.config.modality
                for role in self.config.encoders:
                    features = self._features(encoders[role][modality], prepared)
                    if self.rank == 0:
                        prefix = f"probe/{prepared.config.name}/{modality}/{role}"
                        scores.update({f"{prefix}/{name}": value for name, value in self._score(features, prepared)
                                       .items()})
        if dist.is_initialized() and self.world_size > 1:
            shared = [scores]
            dist.broadcast_object_list(shared, src=0)
            scores = shared[0]
        self.seconds += time.perf_counter() - started
        scores["probe_seconds"] = time.perf_counter() - started
        if self.rank == 0:
            log.info("probe at step %d: %s", step, ", ".join(f"{k.removeprefix('probe/')} {v:.1f}"
                                                               for k, v in scores.items() if k.startswith("probe/")))
        return scores

    def _clips(self, prepared: PreparedSet) -> list[torch.Tensor]:
        """This rank's share of the set's clips, decoded once and kept when they fit in
        CLIP_CACHE_BYTES (a large video set is decoded again at each probe instead)."""
        name = prepared.config.name
        if name in self.clips:
            return self.clips[name]
        mine = np.arange(len(prepared.dataset.items))[self.rank::self.world_size]
        source = EvalClips([prepared.dataset.items[i] for i in mine], prepared.spec, prepared.views, n_clips=1)
        clips, size = [], 0
        for i in range(len(source)):
            clips.append(source[i])
            size += clips[-1].numel() * clips[-1].element_size()
            if size > CLIP_CACHE_BYTES:
                return _LazyClips(source)
        self.clips[name] = clips
        return clips

    def _features(self, encoder: nn.Module, prepared: PreparedSet) -> np.ndarray | None:
        """(N, D) features of every item of the set on rank 0 (None elsewhere): each rank embeds
        ``items[rank::world]``, rank 0 gathers them back into item order."""
        clips = self._clips(prepared)
        dtype = next(encoder.parameters()).dtype
        was_training = encoder.training
        encoder.eval()
        rows = []
        try:
            for begin in range(0, len(clips), self.config.batch_size):
                batch = torch.cat([clips[i] for i in range(begin, min(begin + self.config.batch_size, len(clips)))])
                rows.append(encode_clips(encoder, batch.to(dtype), self.device, None).cpu().numpy())
        finally:
            encoder.train(was_training)
        local = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        if not (dist.is_initialized() and self.world_size > 1):
            return local
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(local, gathered, dst=0)
        if self.rank != 0:
            return None
        out = np.zeros((len(prepared.dataset.items), max(g.shape[1] for g in gathered if g.size)), dtype=np.float32)
        for rank, part in enumerate(gathered):
            out[rank::self.world_size] = part
        return out

    def _score(self, features: np.ndarray, prepared: PreparedSet) -> dict[str, float]:
        train, test, labels = prepared.train, prepared.test, prepared.labels
        knn = knn_top1(torch.from_numpy(features[train]), torch.from_numpy(labels[train]),
                       torch.from_numpy(features[test]), torch.from_numpy(labels[test]),
                       prepared.dataset.num_classes, self.config.knn_k, self.config.knn_temperature)
        linear = linear_top1(features[train], labels[train], features[test], labels[test])
        return {"knn_top1": knn, "linear_top1": linear}

    def over_budget(self, wall_seconds: float) -> str | None:
        """A warning when probing took more than ``budget_fraction`` of the wall time so far."""
        if wall_seconds <= 0 or self.seconds <= self.config.budget_fraction * wall_seconds:
            return None
        share = self.seconds / wall_seconds
        suggested = math.ceil(self.config.every_steps * share / self.config.budget_fraction)
        return (f"probing took {share:.0%} of the wall time so far (probe.budget_fraction "
                f"{self.config.budget_fraction:.0%}): raise probe.every_steps to about {suggested}")
