"""Merge a DeepSpeed JSON config with the experiment YAML (the one source of truth for batch,
clipping and precision); disagreements are errors, never silent overrides. ZeRO settings whose
right value depends on the device may be written ``"auto"`` and are resolved here."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from xkd.config import ConfigError, XKDConfig

OWNED_SECTIONS = ("optimizer", "scheduler")

# zero_optimization keys that may say "auto", with their value per device type.
# contiguous_gradients copies each gradient into the bucket as it is produced: on GPUs that keeps
# the CUDA caching allocator from fragmenting; on the CPU it is only a copy (BENCHMARKS.md).
ZERO_AUTO = {"contiguous_gradients": {"cuda": True, "cpu": False}}


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
    per_step = train.micro_batch_size * world_size
    if train.global_batch_size % per_step:
        raise ConfigError(
            f"{config_source}: train.global_batch_size ({train.global_batch_size}) must be a multiple of "
            f"train.micro_batch_size x world size ({train.micro_batch_size} x {world_size} = {per_step})")
    expected = {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.global_batch_size // per_step,
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
