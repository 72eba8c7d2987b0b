"""Merge a DeepSpeed JSON config with the experiment YAML (the one source of truth for batch,
clipping and precision); disagreements are errors, never silent overrides. ZeRO settings whose
right value depends on the device may be written ``"auto"`` and are resolved here."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

from xkd.config import ConfigError, XKDConfig

OWNED_SECTIONS = ("optimizer", "scheduler")

# zero_optimization keys that may say "auto", with their value per device type.
# contiguous_gradients copies each gradient into the bucket as it is produced: on GPUs that keeps
# the CUDA caching allocator from fragmenting; on the CPU it is only a copy (BENCHMARKS.md).
ZERO_AUTO = {"contiguous_gradients": {"cuda": True, "cpu": False}}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def per_rank_batch(config: XKDConfig, world_size: int, config_source: str = "the YAML config") -> tuple[int, int]:
    """(micro-batch, gradient accumulation steps) of each rank for ``train.global_batch_size`` on
    ``world_size`` ranks. The global batch is kept (a paper hyperparameter); a pinned
    ``train.micro_batch_size`` is used as is, 0 takes the largest divisor of the per-rank batch
    up to ``train.max_micro_batch_size`` that holds whole clips (a multiple of
    ``data.samples_per_decode``). Impossible combinations name what would work."""
    train = config.train
    total = train.global_batch_size
    if total % world_size:
        fits = [n for n in _divisors(total) if n <= 4096]
        raise ConfigError(
            f"{config_source}: train.global_batch_size ({total}) cannot be split evenly over {world_size} ranks; "
            f"world sizes that fit: {', '.join(map(str, fits))} (ranks = nodes x tasks or GPUs per node), or set "
            f"train.global_batch_size to a multiple of {world_size} (optim.base_lr scales with it)")
    per_rank = total // world_size
    repeats = config.data.samples_per_decode  # a micro-batch holds whole clips
    if per_rank % repeats:
        raise ConfigError(
            f"{config_source}: the per-rank batch {per_rank} (train.global_batch_size {total} / {world_size} ranks) "
            f"is not a multiple of data.samples_per_decode ({repeats}); a batch holds the {repeats} samples of each "
            "of its clips")
    if train.micro_batch_size:
        if per_rank % train.micro_batch_size:
            raise ConfigError(
                f"{config_source}: train.micro_batch_size ({train.micro_batch_size}) does not divide the per-rank "
                f"batch {per_rank} (global {total} / {world_size} ranks); micro-batches that fit: "
                f"{', '.join(map(str, _divisors(per_rank)))}, or train.micro_batch_size=0 to derive it")
        micro = train.micro_batch_size
    else:
        fits = [d for d in _divisors(per_rank) if d <= train.max_micro_batch_size and d % repeats == 0]
        if not fits:
            raise ConfigError(
                f"{config_source}: no micro-batch up to train.max_micro_batch_size ({train.max_micro_batch_size}) "
                f"is a multiple of data.samples_per_decode ({repeats}); raise one or lower the other")
        micro = max(fits)
    return micro, per_rank // micro


def with_micro_batch(config: XKDConfig, world_size: int, config_source: str = "the YAML config") -> XKDConfig:
    """``config`` with ``train.micro_batch_size`` set to :func:`per_rank_batch`'s micro-batch."""
    micro, _ = per_rank_batch(config, world_size, config_source)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, micro_batch_size=micro))


def default_device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_ds_config(path: str | Path, config: XKDConfig, world_size: int, config_source: str = "the YAML config",
                      device_type: str | None = None) -> dict[str, Any]:
    """The DeepSpeed config for this run: ``path`` + the YAML's batch, clipping and precision,
    ``"auto"`` ZeRO settings resolved for ``device_type`` (default: CUDA if present, else CPU)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: DeepSpeed config not found")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from error
    train = config.train
    micro, accumulation = per_rank_batch(config, world_size, config_source)
    expected = {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": config.optim.grad_clip,
    }
    for section in OWNED_SECTIONS:
        if section in ds:
            raise ConfigError(f"{path}: remove the {section!r} section: the {section} comes from {config_source} "
                              "(optim.*) and the per-step schedules of xkd/schedules.py")
    for key, value in expected.items():
        if key in ds and ds[key] != value:
            raise ConfigError(f"{path}: {key} = {ds[key]!r} disagrees with {config_source} ({value!r}); "
                              "remove it from the DeepSpeed config or make them agree")
    merged = copy.deepcopy(ds)
    merged.update(expected)
    device_type = device_type or default_device_type()
    zero = merged.get("zero_optimization", {})
    for key, by_device in ZERO_AUTO.items():
        if zero.get(key) == "auto":
            zero[key] = by_device[device_type]
    for precision in ("fp16", "bf16"):
        block = merged.setdefault(precision, {})
        wanted = train.precision == precision
        if "enabled" in block and bool(block["enabled"]) != wanted:
            raise ConfigError(f"{path}: {precision}.enabled = {block['enabled']!r} disagrees with "
                              f"train.precision = {train.precision!r} in {config_source}")
        block["enabled"] = wanted
    return merged
