"""Full fine-tuning of an exported video or audio encoder with a linear head (docs/method.md §6; paper A.6,
Tables S6 and S7).

Model: the exported encoder (teacher by default) -> mean of the last-layer patch tokens -> dropout
-> Linear. Video runs at 224x224 (the learned 7x7 position grid of the 112px pretraining is
interpolated to 14x14 by the encoder, docs/method.md §2.2).

Optimisation: AdamW (0.9, 0.999), weight decay on weights only (not on biases, norms, the
position table or the CLS token), layer-wise learning-rate decay (BEiT): the patch embedding,
CLS token and positions are layer 0, block i is layer i + 1, the final norm and the head are layer
depth + 1, and layer l gets ``lr * decay ** (depth + 1 - l)``; per-step linear warm-up then cosine
to ``min_lr`` (or a fixed lr, FSD50K).

Training clips: one random clip per item and epoch, drawn from (seed, item, epoch).
* video: multi-scale crop (0.08, 1) resized to 224, horizontal flip, RandAugment (timm's
  ``rand_augment_transform``; the same operations and magnitudes on every frame of a clip),
  ImageNet normalisation; then mixup / cutmix with label smoothing on the batch (timm's ``Mixup``;
  cutmix boxes cover all frames).
* audio: volume jitter, log-mel, time warp, SpecAugment-style frequency and time masks (filled
  with 0, the mean of the normalised log-mel); optional mixup.
Test: ``k`` uniformly spaced clips per item (3; 8 for FSD50K), centre crop, mean of the clips'
softmax (single-label: top-1/top-5) or sigmoid (multi-label: mAP) outputs.

Engines: a single process, plain DDP (any launcher that sets RANK/WORLD_SIZE: torchrun, srun,
deepspeed), or DeepSpeed (``engine="deepspeed"`` with a ds_config: ZeRO, bf16/fp16).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from xkd.config import ViewsConfig
from xkd.distributed import mean_over_ranks, resolve_device, start_from_environment, unlink_cpu_allreduce_buffer
from xkd.data.logmel import LogMel
from xkd.data.torch_views import crop_resize, finish_view
from xkd.data.view_params import random_resized_box
from xkd.evaluation.clips import audio_windows, clip_rng, uniform_starts, random_start, video_test_view, video_windows
from xkd.evaluation.datasets import LabeledDataset, Split
from xkd.evaluation.errors import EvalInputError
from xkd.evaluation.metrics import average_clips, classification_metrics
from xkd.evaluation.protocol import ClipSpec
from xkd.schedules import learning_rate

log = logging.getLogger(__name__)

ENGINES = ("auto", "ddp", "deepspeed")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters; defaults = UCF101 video (Table S6). See ``PRESETS``."""

    epochs: int = 100
    batch_size: int = 96  # global; each rank takes batch_size / world_size
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    schedule: str = "cosine"  # cosine | fixed
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.45
    dropout: float = 0.5
    drop_path: float = 0.0
    label_smoothing: float = 0.1
    mixup: float = 0.6
    cutmix: float = 0.5
    randaug: str = "rand-m9-mstd0.5-inc1"  # timm config string; "" disables (paper: RandAug (9, 0.5))
    crop_scale: tuple[float, float] = (0.08, 1.0)
    size: int = 224  # video
    frames: int = 32  # video
    seconds: float = 4.0  # clip window
    test_clips: int = 3
    volume_jitter: float = 0.2  # audio
    freq_masks: int = 2
    freq_mask_max: int = 10  # mel bins
    time_masks: int = 2
    time_mask_max: int = 20  # spectrogram frames
    time_warp: int = 20  # spectrogram frames; 0 disables
    grad_clip: float = 0.0
    seed: int = 0
    num_workers: int = 2
    # fp32 | tf32 (fp32, TF32 matmuls on compute >= 8.0) | bf16 (autocast on CUDA, compute >= 8.0)
    # | fp16 (autocast + loss scaling; V100)
    precision: str = "fp32"
    activation_checkpointing: bool = False  # recompute encoder blocks in backward (ViT-L at 224 px x 32 frames)

    def replace(self, **changes) -> FinetuneConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def clip_spec(self, modality: str, fps: int = 8) -> ClipSpec:
        if modality == "video":
            return ClipSpec("video", frames=self.frames, size=self.size, fps=fps, seconds=self.frames / fps)
        return ClipSpec("audio", seconds=self.seconds)


PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
VIDEO = FinetuneConfig()
PRESETS = {  # paper Table S6 (video) and Table S7 (audio)
    "ucf101": VIDEO,
    "hmdb51": VIDEO.replace(lr=1e-4, warmup_epochs=20.0, mixup=1.0, cutmix=1.0, layer_decay=0.55),
    "k400": VIDEO.replace(warmup_epochs=30.0),  # Table S6: as UCF101 but 30 warm-up epochs
    "esc50": FinetuneConfig(epochs=100, batch_size=64, lr=1e-4, min_lr=0.0, warmup_epochs=10.0, schedule="cosine",
                            weight_decay=0.005, layer_decay=0.65, dropout=0.5, label_smoothing=0.0, mixup=0.0,
                            cutmix=0.0, randaug="", test_clips=3),
    "fsd50k": FinetuneConfig(epochs=30, batch_size=64, lr=1e-4, min_lr=1e-4, warmup_epochs=0.0, schedule="fixed",
                             weight_decay=1e-5, layer_decay=0.65, dropout=0.3, label_smoothing=0.0, mixup=0.0,
                             cutmix=0.0, randaug="", test_clips=8),
}


# ----------------------------------------------------------------------------- model


class Classifier(nn.Module):
    """Encoder -> mean of last-layer patch tokens -> dropout -> Linear."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(x).pooled()))


def set_drop_path(encoder: nn.Module, rate: float) -> None:
    """Stochastic depth, linearly increasing over the blocks up to ``rate`` (0: none)."""
    from timm.layers import DropPath

    depth = len(encoder.blocks)
    for i, block in enumerate(encoder.blocks):
        r = rate * i / max(1, depth - 1)
        block.drop_path1 = DropPath(r) if r > 0 else nn.Identity()
        block.drop_path2 = DropPath(r) if r > 0 else nn.Identity()


def layer_id(name: str, depth: int) -> int:
    """Layer of a parameter for layer-wise lr decay (see the module docstring)."""
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith(("encoder.patch_embed", "encoder.cls_token", "encoder.position")):
        return 0
    return depth + 1


def param_groups(model: Classifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups per (layer, decay/no-decay) with ``lr_scale = layer_decay ** (depth + 1 - layer)``."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or ".position." in name or ".cls_token." in name
        layer = layer_id(name, depth)
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - layer), "layer": layer})
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def lr_at(step: int, total: int, warmup: int, config: FinetuneConfig) -> float:
    """Learning rate of a step: linear warm-up from 0, then fixed or cosine to ``min_lr`` (xkd.schedules)."""
    return learning_rate(step, peak=config.lr, warmup_steps=warmup,
                         total_steps=warmup if config.schedule == "fixed" else total, final=config.min_lr)


# ----------------------------------------------------------------------------- data


def _consistent(transform, frames: list[Image.Image], seed: int) -> list[Image.Image]:
    """Apply a randomised PIL transform with the same random draws to every frame (timm draws from the
    global ``random`` and ``numpy.random`` generators; their states are restored afterwards)."""
    saved = random.getstate(), np.random.get_state()
    try:
        out = []
        for frame in frames:
            random.seed(seed)
            np.random.seed(seed)
            out.append(transform(frame))
        return out
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def time_warp(spec: torch.Tensor, rng: np.random.Generator, window: int) -> torch.Tensor:
    """SpecAugment time warp of a (1, F, T) log-mel: the point w0 moves to w0 + w (|w| <= window),
    both sides stretched linearly (linear interpolation along time)."""
    frames = spec.shape[-1]
    if window <= 0 or frames <= 2 * window + 2:
        return spec
    w0 = int(rng.integers(window, frames - window))
    w = int(rng.integers(-window + 1, window))
    if w == 0:
        return spec
    t = torch.arange(frames, dtype=torch.float32)
    left = t < w0 + w
    source = torch.where(left, t * w0 / (w0 + w), w0 + (t - w0 - w) * (frames - 1 - w0) / (frames - 1 - w0 - w))
    low = source.floor().long().clamp(0, frames - 1)
    high = (low + 1).clamp(max=frames - 1)
    frac = source - low
    return spec[..., low] * (1 - frac) + spec[..., high] * frac


def spec_masks(spec: torch.Tensor, rng: np.random.Generator, config: FinetuneConfig) -> torch.Tensor:
    """SpecAugment masks: ``freq_masks`` bands of [0, freq_mask_max] bins and ``time_masks`` spans of
    [0, time_mask_max] frames, set to 0 (the mean of the normalised log-mel)."""
    spec = spec.clone()
    bins, frames = spec.shape[-2:]
    for _ in range(config.freq_masks):
        width = int(rng.integers(0, config.freq_mask_max + 1))
        start = int(rng.integers(0, max(1, bins - width + 1)))
        spec[..., start:start + width, :] = 0
    for _ in range(config.time_masks):
        width = int(rng.integers(0, config.time_mask_max + 1))
        start = int(rng.integers(0, max(1, frames - width + 1)))
        spec[..., start:start + width] = 0
    return spec


class FinetuneClips(Dataset):
    """Train: item i -> (one augmented clip, target); test: item i -> (k test clips, target)."""

    def __init__(self, dataset: LabeledDataset, indices: np.ndarray, modality: str, spec: ClipSpec,
                 views: ViewsConfig, config: FinetuneConfig, train: bool, epoch: int = 0):
        self.dataset, self.indices, self.modality, self.spec, self.views = dataset, indices, modality, spec, views
        self.config, self.train, self.epoch = config, train, epoch
        self.targets = dataset.targets(indices)
        self.logmel = LogMel(views) if modality == "audio" else None
        self.randaug = None
        if train and modality == "video" and config.randaug:
            from timm.data.auto_augment import rand_augment_transform

            mean = tuple(round(255 * m) for m in (0.485, 0.456, 0.406))
            self.randaug = rand_augment_transform(config.randaug, {"translate_const": int(config.size * 0.45),
                                                                   "img_mean": mean})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int | tuple[int, int]):
        """Item ``i``, or ``(i, epoch)`` as :class:`EpochShuffle` yields them (persistent workers
        keep their own copy of this object, so the epoch travels with the index)."""
        i, epoch = i if isinstance(i, tuple) else (i, self.epoch)
        item = self.dataset.items[int(self.indices[i])]
        target = torch.as_tensor(self.targets[i])
        with torch.no_grad():
            if not self.train:
                starts = uniform_starts(item.duration, self.spec.seconds, self.config.test_clips)
                if self.modality == "video":
                    clips = [video_test_view(f, self.spec.size) for f in video_windows(item, starts, self.spec)]
                else:
                    clips = [self.logmel(w[None]) for w in audio_windows(item, starts, self.spec,
                                                                          self.views.audio_sample_rate)]
                return torch.stack(clips), target
            rng = clip_rng(self.config.seed, item.key, 0, epoch)
            start = np.array([random_start(rng, item.duration, self.spec.seconds)])
            if self.modality == "video":
                return self._video(video_windows(item, start, self.spec)[0], rng), target
            return self._audio(audio_windows(item, start, self.spec, self.views.audio_sample_rate)[0], rng), target

    def _video(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        box = random_resized_box(rng, frames.shape[-2], frames.shape[-1], scale=self.config.crop_scale)
        flip = bool(rng.random() < 0.5)
        x = crop_resize(frames, box, self.spec.size)  # (T, 3, S, S) uint8
        if self.randaug is not None:
            pil = [Image.fromarray(f) for f in x.permute(0, 2, 3, 1).numpy()]
            pil = _consistent(self.randaug, pil, int(rng.integers(2**31)))
            x = torch.from_numpy(np.stack([np.asarray(p) for p in pil])).permute(0, 3, 1, 2)
        return finish_view(x, flip=flip)

    def _audio(self, wave: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        c = self.config
        gain = float(rng.uniform(1 - c.volume_jitter, 1 + c.volume_jitter))
        spec = self.logmel((wave * gain)[None])
        spec = time_warp(spec, rng, c.time_warp)
        return spec_masks(spec, rng, c)


# ----------------------------------------------------------------------------- training


@dataclass
class FinetuneResult:
    metrics: dict[str, float]
    epoch_losses: list[float]
    steps: int
    config: dict  # as trained: ``batch_size`` is the one used (see ``requested_batch_size``)
    world_size: int
    engine: str
    weights: str | None = None
    requested_batch_size: int | None = None  # the config's batch before fit_batch_size adapted it

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def entry(self, split: Split) -> dict:
        """This split's entry of the result JSON / MLflow child run."""
        return {"split": split.name, "metrics": self.metrics,
                "params": {"epochs": self.config["epochs"], "lr": self.config["lr"], "engine": self.engine,
                           "world_size": self.world_size, "batch_size": self.config["batch_size"],
                           "batch_size_requested": self.requested_batch_size, **split.describe()},
                "epoch_losses": self.epoch_losses, "weights": self.weights}


def fit_batch_size(config: FinetuneConfig, train_items: int, world: int, split: str = "train",
                   adapt: bool = False) -> int:
    """The global batch to train with: ``config.batch_size`` when it fits, else (``adapt``) the largest
    that fits, logged as a warning; otherwise an EvalInputError saying which sizes fit.

    A batch fits when it is a multiple of ``world`` (one equal share per rank), of ``2 * world`` with
    mixup/cutmix (timm's Mixup pairs the samples of a rank's batch), and when every rank's share of
    the training items fills at least one batch (batches are full: ``drop_last``). The paper's batch
    sizes (64, 96) assume the full datasets; a small set (a few dozen clips) cannot fill them, and
    the presets then train with the largest batch that fits rather than not at all.
    """
    step = world * (2 if config.mixup > 0 or config.cutmix > 0 else 1)
    why = f"{world} rank(s)" + (", an even batch per rank for mixup/cutmix" if step > world else "")
    if config.batch_size < 1 or config.batch_size % step:
        raise EvalInputError(f"batch size {config.batch_size}: expected a multiple of {step} ({why})")
    largest = (train_items // world) * world // step * step
    if config.batch_size <= largest:
        return config.batch_size
    if largest == 0:
        raise EvalInputError(f"split {split}: {train_items} training items cannot fill any batch ({why}: "
                             f"at least {step} items are needed)")
    fits = f"batch sizes that fit: {step} to {largest}" + (f" in steps of {step}" if step > 1 else "")
    if not adapt:
        raise EvalInputError(f"batch size {config.batch_size} does not fit the {train_items} training items of "
                             f"split {split} ({why}); {fits}")
    log.warning("split %s: the batch size %d is larger than its %d training items can fill (%s); "
                "fine-tuning with batch size %d instead (the largest that fits; lr unchanged)",
                split, config.batch_size, train_items, why, largest)
    return largest


def _read_ds_config(path: str | Path) -> dict:
    """A DeepSpeed JSON given by the user (--ds-config): a missing or malformed file names itself."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--ds-config {path}: no such file (e.g. ds_configs/zero2.json)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EvalInputError(f"--ds-config {path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise EvalInputError(f"--ds-config {path}: expected a JSON object, got {type(config).__name__}")
    return config


def _deepspeed_engine(model: nn.Module, optimizer, ds_config: dict | str, micro_batch: int, world: int,
                      precision: str, grad_clip: float = 0.0):
    """DeepSpeed engine around the classifier with the client AdamW (layer-decay groups). The batch
    sizes are set here; ``precision`` bf16 turns on the ds_config's bf16, fp32 leaves fp16/bf16 as the
    ds_config says (fp16 with dynamic loss scaling on V100s when it enables it)."""
    import deepspeed

    config = _read_ds_config(ds_config) if isinstance(ds_config, (str, Path)) else dict(ds_config)
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = micro_batch * world
    config.pop("optimizer", None)  # the client AdamW with the layer-decay groups is used
    config.pop("scheduler", None)  # the lr is set per step here
    if grad_clip > 0:
        config["gradient_clipping"] = grad_clip
    if precision == "bf16":
        config["bf16"] = {**config.get("bf16", {}), "enabled": True}
        config["fp16"] = {**config.get("fp16", {}), "enabled": False}
    elif precision == "fp16":
        config["fp16"] = {**config.get("fp16", {}), "enabled": True}
        config["bf16"] = {**config.get("bf16", {}), "enabled": False}
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()  # every rank is past DeepSpeed's comm set-up before the buffer names go
    unlink_cpu_allreduce_buffer()
    return engine, optimizer


def finetune(encoder: nn.Module, dataset: LabeledDataset, split: Split, modality: str, views: ViewsConfig,
             config: FinetuneConfig, engine: str = "auto", ds_config: dict | str | None = None,
             output: str | Path | None = None, progress: bool = True, on_epoch=None,
             device: str = "auto", adapt_batch: bool = False, resume: bool = True) -> FinetuneResult:
    """Fine-tune ``encoder`` on ``split.train`` and evaluate on ``split.test`` (see the module docstring).

    ``output``: the fine-tuned weights, and after every epoch the training state in ``output/resume``
    (weights, optimizer, loss scaler or the DeepSpeed checkpoint); with ``resume`` a run given the
    same ``output`` and configuration continues after its last finished epoch.

    ``on_epoch(epoch, mean_loss)`` is called on rank 0 after each epoch (for tracking).
    ``adapt_batch``: train with the largest batch that fits when ``config.batch_size`` does not
    (:func:`fit_batch_size`; the eval CLI does so for a preset's batch, not for an explicit one).
    ``config.precision`` tf32: fp32 with TF32 matmuls (they act on compute >= 8.0 GPUs only).
    Returns the metrics on rank 0 (other ranks get the same object).
    """
    from xkd.devices import tf32_matmuls

    with tf32_matmuls(config.precision == "tf32"):
        return _finetune(encoder, dataset, split, modality, views, config, engine, ds_config, output, progress,
                         on_epoch, device, adapt_batch, resume)


def _finetune(encoder: nn.Module, dataset: LabeledDataset, split: Split, modality: str, views: ViewsConfig,
              config: FinetuneConfig, engine: str, ds_config: dict | str | None, output: str | Path | None,
              progress: bool, on_epoch, device: str, adapt_batch: bool, resume: bool) -> FinetuneResult:
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    if engine not in ENGINES:
        raise EvalInputError(f"engine {engine!r}: expected one of {ENGINES}")
    if engine == "deepspeed" and ds_config is None:  # before anything heavy is built
        raise EvalInputError("engine deepspeed needs a DeepSpeed config (--ds-config, e.g. ds_configs/zero2.json)")
    if config.precision not in PRECISIONS:
        raise EvalInputError(f"precision {config.precision!r}: expected one of {PRECISIONS}")
    rank, world = start_from_environment()
    device = resolve_device(device)
    from xkd.devices import DeviceError, require_precision

    try:
        require_precision(config.precision, device, key="precision")
    except DeviceError as error:
        raise EvalInputError(str(error)) from None
    torch.manual_seed(config.seed)
    np.random.seed(config.seed + rank)
    spec = config.clip_spec(modality, views.video_fps)
    clip_views = spec.views(views)
    multi_label = dataset.multi_label
    num_classes = dataset.num_classes
    requested = config.batch_size
    config = config.replace(batch_size=fit_batch_size(config, len(split.train), world, split.name, adapt_batch))
    micro = config.batch_size // world
    mixing = (config.mixup > 0 or config.cutmix > 0)
    if config.drop_path > 0:
        set_drop_path(encoder, config.drop_path)
    from xkd.models.encoder import set_activation_checkpointing

    set_activation_checkpointing(encoder, config.activation_checkpointing)
    model = Classifier(encoder, num_classes, config.dropout).to(device)
    groups = param_groups(model, config.weight_decay, config.layer_decay)
    scales = [g.pop("lr_scale") for g in groups]
    for g in groups:
        g.pop("layer")
    # Fused AdamW, as pretraining (one kernel per group instead of a loop over tensors).
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=True)
    if engine == "deepspeed":
        trainer = DeepSpeedSteps(model, *_deepspeed_engine(model, optimizer, ds_config, micro, world,
                                                          config.precision, config.grad_clip))
    else:
        trainer = TorchSteps(model, optimizer, device, world, config.precision, config.grad_clip)
    mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.label_smoothing,
                  num_classes=num_classes, multi_label=multi_label) if mixing else None
    if multi_label:
        criterion = nn.BCEWithLogitsLoss()
    elif mixup is not None:
        criterion = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    train_set = FinetuneClips(dataset, split.train, modality, spec, clip_views, config, train=True)
    sampler = EpochShuffle(len(split.train), rank, world, config.seed)
    loader = DataLoader(train_set, batch_size=micro, sampler=sampler, drop_last=True,
                        num_workers=config.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=config.num_workers > 0)
    steps_per_epoch = len(sampler) // micro  # >= 1: fit_batch_size made sure of it
    total, warmup = config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)
    resume_dir = Path(output) / "resume" if output is not None else None
    identity = {"config": dataclasses.asdict(config), "split": split.name, "modality": modality, "engine": trainer.name,
                "world_size": world}
    start_epoch, losses = trainer.load(resume_dir, identity) if resume and resume_dir is not None else (0, [])
    if start_epoch and rank == 0:
        log.info("fine-tuning resumes after epoch %d of %d (%s)", start_epoch, config.epochs, resume_dir)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        trainer.module.train()
        sampler.epoch = epoch  # yields (item, epoch): the epoch reaches persistent workers with each index
        batches = iter(loader)  # first: starting the workers draws their seed from the global generator
        # Dropout, drop-path and mixup draw from generators seeded per epoch, so a resumed run draws
        # exactly what an uninterrupted one would.
        epoch_seed = int(np.random.SeedSequence([config.seed, epoch, rank]).generate_state(1)[0])
        torch.manual_seed(epoch_seed)
        np.random.seed(epoch_seed)
        epoch_loss, seen = torch.zeros((), dtype=torch.float64), 0
        bar = tqdm(batches, total=len(loader), desc=f"finetune epoch {epoch + 1}/{config.epochs}",
                   disable=not progress or rank != 0, dynamic_ncols=True)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if mixup is not None:
                shape = x.shape
                x, y = mixup(x.flatten(1, -3) if x.ndim == 5 else x, y)  # video: cutmix box over all frames
                x = x.reshape(shape)
            lr = lr_at(step, total, warmup, config)
            for group, scale in zip(trainer.optimizer.param_groups, scales):
                group["lr"] = lr * scale
            with trainer.autocast():
                logits = trainer.module(x.to(trainer.input_dtype))
                loss = criterion(logits.float(), y.float() if multi_label else y)
            trainer.backward_and_step(loss)
            value = float(loss.detach())
            epoch_loss += value * len(x)
            seen += len(x)
            step += 1
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", refresh=False)
        mean = mean_over_ranks({"loss": epoch_loss / max(1, seen)})["loss"]
        losses.append(mean)
        if resume_dir is not None:
            trainer.save(resume_dir, epoch + 1, losses, identity)
        if rank == 0:
            log.info("epoch %d: mean training loss %.4f", epoch + 1, mean)
            if on_epoch is not None:
                on_epoch(epoch + 1, mean)

    metrics = evaluate(trainer.module, dataset, split, modality, clip_views, spec, config, rank, world, device,
                       progress, trainer.input_dtype)
    weights = _save_weights(model, output, dataset, modality, rank, engine == "deepspeed") if output is not None else None
    return FinetuneResult(metrics=metrics, epoch_losses=losses, steps=step, config=dataclasses.asdict(config),
                          world_size=world, engine=trainer.name, weights=weights, requested_batch_size=requested)


# ----------------------------------------------------------------------------- engines


class EpochShuffle(torch.utils.data.Sampler):
    """This rank's share of one seeded permutation per epoch (set ``epoch`` before iterating): the
    same items in the same order whether the loader is new or its workers persist."""

    def __init__(self, items: int, rank: int, world: int, seed: int):
        self.items, self.rank, self.world, self.seed, self.epoch = items, rank, world, seed, 0

    def __len__(self) -> int:
        return self.items // self.world

    def __iter__(self):
        order = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 0xF7])).permutation(self.items)
        return iter([(int(i), self.epoch) for i in order[self.rank::self.world][:len(self)]])


class TorchSteps:
    """One process or DDP: autocast on GPUs (bf16/fp16), dynamic loss scaling for fp16, clipping."""

    def __init__(self, model: nn.Module, optimizer, device: torch.device, world: int, precision: str, grad_clip: float):
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.name = "ddp" if world > 1 else "single"
        self.module = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                           else None) if world > 1 else model)
        self.half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.half is torch.float16)
        self.input_dtype = torch.float32

    def autocast(self):
        return torch.autocast("cuda", dtype=self.half) if self.half is not None else torch.autocast("cpu", enabled=False)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def save(self, folder: Path, epochs_done: int, losses: list[float], identity: dict) -> None:
        """After an epoch: weights, optimizer and scaler (rank 0; the ranks hold the same state)."""
        if dist.is_initialized() and dist.get_rank() != 0:
            return
        from xkd.engine.checkpoint import atomic_torch_save

        folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                           "scaler": self.scaler.state_dict(), "epochs_done": epochs_done, "losses": losses,
                           "identity": json.dumps(identity, sort_keys=True)}, folder / "finetune_state.pt")

    def load(self, folder: Path, identity: dict) -> tuple[int, list[float]]:
        """(epochs done, their losses) from the last save, or (0, []) when there is none."""
        path = folder / "finetune_state.pt"
        if not path.is_file():
            return 0, []
        state = torch.load(path, map_location="cpu", weights_only=True)
        _same_run(path, state["identity"], identity)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        return int(state["epochs_done"]), list(state["losses"])


class DeepSpeedSteps:
    """A DeepSpeed engine (ZeRO, its own fp16/bf16 and loss scaling, clipping from the ds_config)."""

    name = "deepspeed"

    def __init__(self, model: nn.Module, engine, optimizer):
        self.model, self.module, self.optimizer = model, engine, optimizer
        self.input_dtype = next(engine.parameters()).dtype

    def autocast(self):
        return torch.autocast("cpu", enabled=False)  # the engine's module is already in its precision

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.module.backward(loss)
        self.module.step()

    def save(self, folder: Path, epochs_done: int, losses: list[float], identity: dict) -> None:
        self.module.save_checkpoint(str(folder), tag="latest_epoch", client_state={
            "epochs_done": epochs_done, "losses": losses, "identity": json.dumps(identity, sort_keys=True)})

    def load(self, folder: Path, identity: dict) -> tuple[int, list[float]]:
        if not (folder / "latest_epoch").is_dir():
            return 0, []
        from xkd.engine import checkpoint_safety

        with checkpoint_safety.weights_only_loads():
            _, client = self.module.load_checkpoint(str(folder), tag="latest_epoch")
        _same_run(folder / "latest_epoch", client["identity"], identity)
        return int(client["epochs_done"]), list(client["losses"])


def _same_run(path: Path, saved: str, identity: dict) -> None:
    """Resume only the run that was saved: same configuration, split, modality, engine and ranks."""
    if saved != json.dumps(identity, sort_keys=True):
        old = json.loads(saved)
        changed = sorted(k for k in {**old, **identity} if old.get(k) != identity.get(k))
        raise EvalInputError(f"{path}: a fine-tuning state of another run (differs in {', '.join(changed)}); "
                             "give another output directory or remove it to start over")


def _save_weights(model: nn.Module, output: str | Path, dataset: LabeledDataset, modality: str, rank: int,
                  use_deepspeed: bool) -> str:
    """Encoder + head in fp32 safetensors (rank 0); ZeRO-3 partitions are gathered on every rank first."""
    from contextlib import nullcontext

    from safetensors.torch import save_file

    path = Path(output) / "finetuned.safetensors"
    gather = nullcontext()
    if use_deepspeed and any(hasattr(p, "ds_id") for p in model.parameters()):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    with gather:
        if rank == 0:
            Path(output).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}, str(path),
                      metadata={"classes": "\n".join(dataset.classes), "modality": modality})
    return str(path)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: LabeledDataset, split: Split, modality: str, views: ViewsConfig,
             spec: ClipSpec, config: FinetuneConfig, rank: int = 0, world: int = 1,
             device: torch.device = torch.device("cpu"), progress: bool = False,
             input_dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Multi-clip test: mean of the clips' softmax (sigmoid for multi-label) per item. Items are spread
    over the ranks (every rank runs the same number of batches, padding with a repeated item, as
    ZeRO-3 gathers parameters collectively) and the scores are gathered on every rank."""
    model.eval()
    test_set = FinetuneClips(dataset, split.test, modality, spec, views, config, train=False)
    mine = list(range(rank, len(test_set), world))
    per_rank = -(-len(test_set) // world)
    padded = mine + [mine[-1] if mine else 0] * (per_rank - len(mine))
    loader = DataLoader(torch.utils.data.Subset(test_set, padded), batch_size=max(1, 32 // config.test_clips),
                        shuffle=False, num_workers=config.num_workers)
    scores = []
    for x, _ in tqdm(loader, desc="test", disable=not progress or rank != 0, dynamic_ncols=True):
        b, k = x.shape[:2]
        logits = model(x.flatten(0, 1).to(device, input_dtype)).float().cpu()
        probs = torch.sigmoid(logits) if dataset.multi_label else logits.softmax(-1)
        scores.append(probs.reshape(b, k, -1).numpy())
    local = dict(zip(mine, average_clips(np.concatenate(scores))[:len(mine)])) if mine else {}
    if world > 1:
        gathered: list[dict] = [None] * world  # type: ignore[list-item]
        dist.all_gather_object(gathered, local)
        local = {k: v for part in gathered for k, v in part.items()}
    item_scores = np.stack([local[i] for i in range(len(test_set))])
    return classification_metrics(item_scores, test_set.targets, dataset.multi_label)
