"""Typed experiment configuration: YAML files validated into dataclasses.

Every field has the paper / reference-code default described in ``docs/method.md`` (which
also lists every deviation and the switch for it); a YAML file only states what differs. Loading is strict: an unknown key, a value of
the wrong type or an impossible value raises :class:`ConfigError` naming the file,
the dotted key and what was expected. Command-line overrides use ``key.sub=value``
(the value is parsed as YAML, so ``optim.base_lr=2e-4`` is a float).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

VARIANTS = ("ms", "mas", "mats")
ENCODER_SIZES = ("tiny", "small", "base", "large")
TEACHER_VIEWS = ("global", "local")
REFINE_ENERGY = ("norm", "squared_norm")
TEACHER_POOLS = ("refine", "mean")  # model.teacher_pool (mean: ablation without refine)
RECON_MODALITIES = ("both", "video")  # loss.recon_modalities (video: the recon_v ablation arm)
PAIR_REDUCTIONS = ("sum", "mean")  # loss.pair_reduction, docs/method.md §4.8
MMD_DISTANCE_SCALES = ("none", "dim")  # loss.mmd_distance_scale, docs/method.md §4.6
PRECISIONS = ("fp32", "fp16", "bf16")
LOADERS = ("dali", "torch")
CPU_VIDEO_DECODERS = ("pyav", "dali")
DEVICES = ("auto", "cpu", "gpu")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, mistyped or impossible."""


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 insists on ``1.0e-4``)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


@dataclass
class DecoderConfig:
    """MAE decoder, one per modality (docs/method.md §3.2)."""

    embed_dim: int = 384
    depth: int = 4
    num_heads: int = 12


@dataclass
class HeadConfig:
    """DINO-style projector head (docs/method.md §3.3)."""

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    out_dim: int = 8192


@dataclass
class ModelConfig:
    variant: str = "ms"  # ms | mas (shared student blocks) | mats (shared student and teacher blocks)
    video_encoder: str = "base"  # tiny | small | base | large, see xkd/models/sizes.py
    audio_encoder: str = "base"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    video_tubelet: int = 4  # frames per video cuboid
    video_patch: int = 16  # pixels per cuboid side
    audio_patch_freq: int = 4  # mel bins per audio patch
    audio_patch_time: int = 16  # spectrogram frames per audio patch
    video_mask_ratio: float = 0.85
    audio_mask_ratio: float = 0.80
    # The paper feeds the teachers the global view; the reference code the first local view.
    teacher_view: str = "global"
    # Omega of eq. 6: "norm" = ||mean f|| / ||mean w f|| (reference code, energy preserving),
    # "squared_norm" = the paper's ratio of squared norms.
    refine_energy: str = "norm"
    # Teacher pooling before the head: "refine" (eq. 5-6) or "mean" (plain mean of patch tokens, ablation).
    teacher_pool: str = "refine"
    drop_path: float = 0.0
    # Recompute each student encoder block in the backward pass (torch.utils.checkpoint) instead of
    # storing its activations: less memory (ViT-L at paper geometry), ~30 % more compute; same results.
    activation_checkpointing: bool = False


@dataclass
class ViewsConfig:
    """Global/local view geometry and the log-mel recipe (docs/method.md §1)."""

    video_fps: int = 8
    video_global_frames: int = 32
    video_global_size: int = 112
    video_local_frames: int = 8
    video_local_size: int = 96
    video_local_views: int = 1
    audio_sample_rate: int = 16000
    audio_global_seconds: float = 4.0
    audio_local_seconds: float = 1.0
    audio_local_views: int = 1
    mel_bins: int = 80
    n_fft: int = 1024
    hop_length: int = 143
    mel_fmin: float = 0.0
    mel_fmax: float = 8000.0
    mel_mean: float = -5.3688107
    mel_std: float = 4.410007
    mel_log_eps: float = 1.1920929e-07  # log(mel + eps); float32 machine epsilon as in BYOL-A

    def audio_frames(self, seconds: float) -> int:
        """Spectrogram frames of a window: centred STFT gives samples // hop + 1."""
        return int(round(seconds * self.audio_sample_rate)) // self.hop_length + 1

    @property
    def audio_global_frames(self) -> int:
        return self.audio_frames(self.audio_global_seconds)

    @property
    def audio_local_frames(self) -> int:
        return self.audio_frames(self.audio_local_seconds)


@dataclass
class TemperatureSchedule:
    """Teacher temperature: linear warm-up from ``start`` to ``end`` over ``warmup_epochs``."""

    start: float = 0.1
    end: float = 0.1
    warmup_epochs: float = 0.0


@dataclass
class LossConfig:
    ae_weight: float = 5.0  # lambda_ae, eq. 12
    da_weight: float = 1.0  # lambda_da
    kd_weight: float = 1.0  # lambda_kd
    # Which reconstruction losses enter L_ae: "both" (eq. 2) or "video" (the recon_v ablation arm).
    recon_modalities: str = "both"
    # How each two-term loss is reduced (docs/method.md §4.8): "sum" = paper eq. 2, 9, 11
    # (L_ae = L^v + L^a, L_da = MMD_s + MMD_t, L_kd = CE_v->a + CE_a->v); "mean" = reference code,
    # which averages all three pairs, i.e. halves the total loss (same relative weights).
    pair_reduction: str = "sum"
    norm_pix_loss: bool = True  # per-patch normalised targets (eq. 1 with MAE's normalisation)
    mmd_gammas: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0])
    # Squared distances in the MMD kernel: "none" = paper / reference code; "dim" divides them by
    # the head output width D (an ablation arm; docs/method.md §4.6).
    mmd_distance_scale: str = "none"
    student_temperature: float = 0.1
    center_momentum: float = 0.9
    video_teacher_temperature: TemperatureSchedule = field(default_factory=lambda: TemperatureSchedule(0.1, 0.1, 0.0))
    audio_teacher_temperature: TemperatureSchedule = field(default_factory=lambda: TemperatureSchedule(0.07, 0.07, 0.0))


@dataclass
class OptimConfig:
    base_lr: float = 1e-4  # for base_batch_size; scaled linearly with the global batch
    base_batch_size: int = 256
    min_lr: float = 0.0
    warmup_epochs: float = 30.0
    epochs: int = 800
    weight_decay: float = 0.3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    ema_momentum_start: float = 0.997
    ema_momentum_end: float = 1.0
    # Reference code clips each parameter tensor to 0.3 on encoders + heads; under
    # ZeRO the gradient is sharded, so we clip the global norm instead (documented deviation).
    grad_clip: float = 0.3


@dataclass
class DataConfig:
    shards: str = ""  # directory or brace pattern of WebDataset shards
    loader: str = "dali"  # dali | torch
    device: str = "auto"  # auto | cpu | gpu (where DALI decodes)
    # The DALI loader's video decoder on the CPU (the GPU always decodes with NVDEC): pyav seeks to the
    # window and leaves YUV to the trainer (a third less CPU per window; BENCHMARKS.md, issue 15);
    # dali is DALI's own CPU decoder, the GPU path's graph.
    cpu_video_decoder: str = "pyav"  # pyav | dali
    # The DALI loader's num_workers readers (which decode with pyav) as worker processes writing each
    # window into its batch's shared memory (true), or threads of the rank's process (false: they hand
    # Python's GIL back and forth; BENCHMARKS.md, "Rows in worker processes"). A script that builds
    # the loader itself must guard its top level with ``if __name__ == "__main__":``.
    decode_processes: bool = True
    num_workers: int = 2
    shuffle_buffer: int = 256
    steps_per_epoch: int = 0  # 0: derived from the shard manifest
    # Training samples drawn from each decoded clip (MAE-ST's repeated augmentation): k samples share
    # the clip's decode and its temporal window, every other augmentation is drawn per sample. 1: the
    # paper. The micro-batch must be a multiple of it (a batch holds whole clips).
    samples_per_decode: int = 1


@dataclass
class TrainConfig:
    global_batch_size: int = 256  # a paper hyperparameter: kept whatever the world size
    # Per rank and forward pass. 0: derived from the world size (the largest divisor of the
    # per-rank batch up to max_micro_batch_size; the rest is gradient accumulation).
    micro_batch_size: int = 0
    max_micro_batch_size: int = 32  # what one device's memory holds (used when micro_batch_size is 0)
    precision: str = "bf16"  # fp32 | fp16 (V100) | bf16
    seed: int = 0
    max_steps: int = 0  # 0: epochs * steps_per_epoch
    log_every_steps: int = 10
    checkpoint_every_steps: int = 1000
    # Reconstruction grids and the refine attention heat-map as MLflow artifacts; 0: never.
    visualize_every_steps: int = 500
    max_consecutive_nonfinite: int = 20  # then stop with a checkpoint of the last good state
    # gloo/NCCL timeout (process-group start-up and every collective): a dead peer fails the job
    # within this many seconds instead of hanging it (xkd/distributed.py).
    dist_timeout_s: int = 600


@dataclass
class TrackingConfig:
    experiment: str = ""  # MLflow experiment; empty: the config name
    tracking_uri: str = ""  # empty: MLFLOW_TRACKING_URI or sqlite under the run dir's parent


@dataclass
class ProbeSet:
    """One labelled probe set (shards as ``eval/`` takes them; xkd/engine/probe.py)."""

    name: str = ""
    data: str = ""  # shard directory (relative: from the working directory, else the repo root)
    modality: str = "audio"  # audio | video
    labels: list[str] = field(default_factory=list)  # label CSVs overriding the shards' labels (eval --labels)
    # eval --splits spec (e.g. esc50:data/sounds/folds.csv); its first split is the probe's train/test.
    # Empty: a fixed split of the set itself (every other item of each class is a test item).
    splits: str = ""


@dataclass
class ProbeConfig:
    """Periodic probe of the representation during pretraining (weighted k-NN + linear, as DINO)."""

    every_steps: int = 0  # 0: off; else at step 0 (random-init baseline) and every N steps
    encoders: list[str] = field(default_factory=lambda: ["teacher"])  # teacher and/or student
    sets: list[ProbeSet] = field(default_factory=list)
    knn_k: int = 20
    knn_temperature: float = 0.07
    batch_size: int = 32  # clips per forward pass
    budget_fraction: float = 0.05  # warn when probing takes more than this share of the wall time


@dataclass
class XKDConfig:
    name: str = "xkd"
    model: ModelConfig = field(default_factory=ModelConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> XKDConfig:
    """Load ``path`` (YAML), apply ``key.sub=value`` overrides, validate, return the config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = _parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    for override in overrides:
        apply_override(raw, override, source=str(path))
    return config_from_dict(raw, source=str(path))


def _removed_keys(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """``raw`` without removed keys that change nothing; a clear error for those that would.

    ``loss.recon_average_modalities`` (removed): ``false`` was the paper's sum, today's default, and is
    dropped, so configs stored with older checkpoints and exports still load; ``true`` halved L_ae only,
    which is neither the paper nor the reference code, and is refused with what replaces it.
    """
    loss = raw.get("loss")
    if not (isinstance(loss, dict) and "recon_average_modalities" in loss):
        return raw
    if loss["recon_average_modalities"] is not False:
        raise ConfigError(
            f"{source}: loss.recon_average_modalities was removed: it halved L_ae only, which is not what the "
            "reference code does. Use loss.pair_reduction: sum (paper) or mean (reference code: L_ae, L_da "
            "and L_kd each averaged over their two terms); see docs/method.md §4.8")
    loss = {k: v for k, v in loss.items() if k != "recon_average_modalities"}
    return {**raw, "loss": loss}


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> XKDConfig:
    raw = _removed_keys(raw, source)
    config = _build(XKDConfig, raw, source, prefix="")
    validate(config, source)
    return config


def apply_override(raw: dict[str, Any], override: str, source: str = "<overrides>") -> None:
    """Set ``a.b.c=value`` in the nested dict ``raw``; the value is parsed as YAML."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"{source}: override {override!r}: expected the form key.sub=value")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {override!r}: {part!r} is not a section")
    node[parts[-1]] = _parse_yaml(value)


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or '<top>'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{source}: unknown key {where}{unknown[0]!r}; expected one of {sorted(fields)}"
        )
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, source, f"{prefix}.{name}" if prefix else name)
    return cls(**values)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        (item_hint,) = typing.get_args(hint)[:1]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}: expected a list of {item_hint.__name__}, got {value!r}")
        return [_coerce(item_hint, item, source, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{source}: {key}: union types are not supported in configs")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {hint}")


# ----------------------------------------------------------------------------- validation


def _check(condition: bool, source: str, key: str, expected: str, got: Any) -> None:
    if not condition:
        raise ConfigError(f"{source}: {key}: expected {expected}, got {got!r}")


def _one_of(value: str, choices: tuple[str, ...], source: str, key: str) -> None:
    _check(value in choices, source, key, f"one of {list(choices)}", value)


def validate(config: XKDConfig, source: str = "<config>") -> None:
    """Reject impossible values with the file, the key and what is expected."""
    m, v, loss, o, t, d = config.model, config.views, config.loss, config.optim, config.train, config.data
    _one_of(m.variant, VARIANTS, source, "model.variant")
    _one_of(m.video_encoder, ENCODER_SIZES, source, "model.video_encoder")
    _one_of(m.audio_encoder, ENCODER_SIZES, source, "model.audio_encoder")
    _one_of(m.teacher_view, TEACHER_VIEWS, source, "model.teacher_view")
    _one_of(m.refine_energy, REFINE_ENERGY, source, "model.refine_energy")
    _one_of(m.teacher_pool, TEACHER_POOLS, source, "model.teacher_pool")
    _one_of(loss.recon_modalities, RECON_MODALITIES, source, "loss.recon_modalities")
    _one_of(t.precision, PRECISIONS, source, "train.precision")
    _one_of(d.loader, LOADERS, source, "data.loader")
    _one_of(d.device, DEVICES, source, "data.device")
    _one_of(d.cpu_video_decoder, CPU_VIDEO_DECODERS, source, "data.cpu_video_decoder")
    if m.variant in ("mas", "mats"):
        _check(
            m.video_encoder == m.audio_encoder, source, "model.audio_encoder",
            f"the same size as model.video_encoder ({m.video_encoder!r}) because variant "
            f"{m.variant!r} shares transformer blocks between modalities", m.audio_encoder,
        )
    for key in ("video_mask_ratio", "audio_mask_ratio"):
        ratio = getattr(m, key)
        _check(0.0 < ratio < 1.0, source, f"model.{key}", "a ratio strictly between 0 and 1", ratio)
    _check(0.0 <= m.drop_path < 1.0, source, "model.drop_path", "a rate in [0, 1)", m.drop_path)
    for key in ("video_tubelet", "video_patch", "audio_patch_freq", "audio_patch_time"):
        _check(getattr(m, key) > 0, source, f"model.{key}", "a positive integer", getattr(m, key))
    dec = m.decoder
    _check(dec.depth > 0 and dec.num_heads > 0, source, "model.decoder", "positive depth and num_heads", dec)
    _check(dec.embed_dim % dec.num_heads == 0, source, "model.decoder.embed_dim",
           f"a multiple of model.decoder.num_heads ({dec.num_heads})", dec.embed_dim)
    head = m.head
    for key in ("hidden_dim", "bottleneck_dim", "out_dim"):
        _check(getattr(head, key) > 0, source, f"model.head.{key}", "a positive integer", getattr(head, key))

    # View geometry must tile exactly into patches (docs/method.md §2).
    for key in ("video_global_size", "video_local_size"):
        size = getattr(v, key)
        _check(size > 0 and size % m.video_patch == 0, source, f"views.{key}",
               f"a positive multiple of model.video_patch ({m.video_patch})", size)
    for key in ("video_global_frames", "video_local_frames"):
        frames = getattr(v, key)
        _check(frames > 0 and frames % m.video_tubelet == 0, source, f"views.{key}",
               f"a positive multiple of model.video_tubelet ({m.video_tubelet})", frames)
    _check(v.mel_bins > 0 and v.mel_bins % m.audio_patch_freq == 0, source, "views.mel_bins",
           f"a positive multiple of model.audio_patch_freq ({m.audio_patch_freq})", v.mel_bins)
    for key, frames in (("audio_global_seconds", v.audio_global_frames), ("audio_local_seconds", v.audio_local_frames)):
        _check(getattr(v, key) > 0 and frames % m.audio_patch_time == 0, source, f"views.{key}",
               f"a duration whose spectrogram ({frames} frames at hop {v.hop_length}) is a multiple of "
               f"model.audio_patch_time ({m.audio_patch_time}) frames", getattr(v, key))
    _check(v.video_local_frames <= v.video_global_frames, source, "views.video_local_frames",
           f"at most views.video_global_frames ({v.video_global_frames})", v.video_local_frames)
    _check(v.audio_local_seconds <= v.audio_global_seconds, source, "views.audio_local_seconds",
           f"at most views.audio_global_seconds ({v.audio_global_seconds})", v.audio_local_seconds)
    for key in ("video_local_views", "audio_local_views"):
        _check(getattr(v, key) >= 1, source, f"views.{key}", "at least 1 local view", getattr(v, key))
    _check(v.mel_std > 0, source, "views.mel_std", "a positive number", v.mel_std)
    _check(0 <= v.mel_fmin < v.mel_fmax <= v.audio_sample_rate / 2, source, "views.mel_fmax",
           f"0 <= mel_fmin < mel_fmax <= sample_rate / 2 ({v.audio_sample_rate / 2})", v.mel_fmax)

    for key in ("ae_weight", "da_weight", "kd_weight"):
        _check(getattr(loss, key) >= 0, source, f"loss.{key}", "a non-negative weight", getattr(loss, key))
    _check(loss.ae_weight + loss.da_weight + loss.kd_weight > 0, source, "loss", "at least one positive weight",
           (loss.ae_weight, loss.da_weight, loss.kd_weight))
    _one_of(loss.pair_reduction, PAIR_REDUCTIONS, source, "loss.pair_reduction")
    _one_of(loss.mmd_distance_scale, MMD_DISTANCE_SCALES, source, "loss.mmd_distance_scale")
    _check(len(loss.mmd_gammas) > 0 and all(g > 0 for g in loss.mmd_gammas), source, "loss.mmd_gammas",
           "a non-empty list of positive kernel widths", loss.mmd_gammas)
    _check(loss.student_temperature > 0, source, "loss.student_temperature", "a positive number",
           loss.student_temperature)
    _check(0 <= loss.center_momentum < 1, source, "loss.center_momentum", "a momentum in [0, 1)",
           loss.center_momentum)
    for key in ("video_teacher_temperature", "audio_teacher_temperature"):
        schedule = getattr(loss, key)
        _check(schedule.start > 0 and schedule.end > 0, source, f"loss.{key}", "positive temperatures", schedule)
        _check(schedule.warmup_epochs >= 0, source, f"loss.{key}.warmup_epochs", "a non-negative number",
               schedule.warmup_epochs)

    _check(o.base_lr > 0, source, "optim.base_lr", "a positive learning rate", o.base_lr)
    _check(0 <= o.min_lr <= o.base_lr, source, "optim.min_lr", "0 <= min_lr <= base_lr", o.min_lr)
    _check(o.base_batch_size > 0, source, "optim.base_batch_size", "a positive integer", o.base_batch_size)
    _check(o.epochs > 0, source, "optim.epochs", "a positive integer", o.epochs)
    _check(0 <= o.warmup_epochs <= o.epochs, source, "optim.warmup_epochs", f"between 0 and optim.epochs ({o.epochs})",
           o.warmup_epochs)
    _check(o.weight_decay >= 0, source, "optim.weight_decay", "a non-negative number", o.weight_decay)
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), source, "optim.betas",
           "two numbers in [0, 1)", o.betas)
    _check(0 <= o.ema_momentum_start <= o.ema_momentum_end <= 1, source, "optim.ema_momentum_start",
           "0 <= ema_momentum_start <= ema_momentum_end <= 1", (o.ema_momentum_start, o.ema_momentum_end))
    _check(o.grad_clip >= 0 and math.isfinite(o.grad_clip), source, "optim.grad_clip",
           "a non-negative number (0 disables clipping)", o.grad_clip)

    _check(t.micro_batch_size >= 0, source, "train.micro_batch_size", "0 (derived) or a positive integer",
           t.micro_batch_size)
    _check(t.max_micro_batch_size > 0, source, "train.max_micro_batch_size", "a positive integer",
           t.max_micro_batch_size)
    _check(t.global_batch_size > 0 and t.global_batch_size % max(t.micro_batch_size, 1) == 0, source,
           "train.global_batch_size", f"a positive multiple of train.micro_batch_size ({t.micro_batch_size})",
           t.global_batch_size)
    _check(t.max_steps >= 0, source, "train.max_steps", "a non-negative integer", t.max_steps)
    _check(t.log_every_steps > 0, source, "train.log_every_steps", "a positive integer", t.log_every_steps)
    _check(t.checkpoint_every_steps > 0, source, "train.checkpoint_every_steps", "a positive integer",
           t.checkpoint_every_steps)
    _check(t.visualize_every_steps >= 0, source, "train.visualize_every_steps", "a non-negative integer (0: off)",
           t.visualize_every_steps)
    _check(t.max_consecutive_nonfinite > 0, source, "train.max_consecutive_nonfinite", "a positive integer",
           t.max_consecutive_nonfinite)
    _check(t.dist_timeout_s > 0, source, "train.dist_timeout_s", "a positive number of seconds", t.dist_timeout_s)
    _check(d.num_workers >= 0, source, "data.num_workers", "a non-negative integer", d.num_workers)
    _check(d.steps_per_epoch >= 0, source, "data.steps_per_epoch", "a non-negative integer", d.steps_per_epoch)
    _check(d.samples_per_decode >= 1, source, "data.samples_per_decode", "a positive integer (1: the paper)",
           d.samples_per_decode)
    _check(t.micro_batch_size % d.samples_per_decode == 0, source, "train.micro_batch_size",
           f"a multiple of data.samples_per_decode ({d.samples_per_decode}), or 0 to derive it", t.micro_batch_size)
    _validate_probe(config.probe, source)


def _validate_probe(p: ProbeConfig, source: str) -> None:
    _check(p.every_steps >= 0, source, "probe.every_steps", "a non-negative integer (0: off)", p.every_steps)
    _check(bool(p.encoders) and all(e in ("teacher", "student") for e in p.encoders) and
           len(set(p.encoders)) == len(p.encoders), source, "probe.encoders",
           "a non-empty list of teacher and/or student", p.encoders)
    _check(p.knn_k > 0, source, "probe.knn_k", "a positive integer", p.knn_k)
    _check(p.knn_temperature > 0, source, "probe.knn_temperature", "a positive number", p.knn_temperature)
    _check(p.batch_size > 0, source, "probe.batch_size", "a positive integer", p.batch_size)
    _check(0 < p.budget_fraction <= 1, source, "probe.budget_fraction", "a share in (0, 1]", p.budget_fraction)
    _check(not p.every_steps or bool(p.sets), source, "probe.sets", "at least one probe set when "
           "probe.every_steps > 0", p.sets)
    names = [s.name for s in p.sets]
    for i, probe_set in enumerate(p.sets):
        key = f"probe.sets[{i}]"
        _check(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", probe_set.name)), source, f"{key}.name",
               "a name of letters, digits, '_', '-' or '.' (it is part of the MLflow metric name)", probe_set.name)
        _check(names.count(probe_set.name) == 1, source, f"{key}.name", "a name no other probe set has",
               probe_set.name)
        _check(bool(probe_set.data), source, f"{key}.data", "a shard directory", probe_set.data)
        _one_of(probe_set.modality, ("audio", "video"), source, f"{key}.modality")


def scaled_lr(config: XKDConfig) -> float:
    """Peak learning rate: base_lr scaled linearly with the global batch (docs/method.md §5)."""
    return config.optim.base_lr * config.train.global_batch_size / config.optim.base_batch_size
