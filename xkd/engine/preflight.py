"""Checks that need no process group: run on every rank before DeepSpeed starts, so that a bad
``--data``, a missing ``--resume`` tag, a changed world size or a changed run is an ``error:``
line and exit status 2 within seconds, not a traceback after the distributed start-up.

A resume is compared with the checkpoint's ``xkd_meta.json`` (written by every save):

- the world size must match (ZeRO partitions cannot be re-split);
- the resolved config must match, except for run-control keys that do not change the training
  trajectory (:data:`RUN_CONTROL_KEYS`);
- the data set (sample keys in shard order, :func:`data_fingerprint`) must match;
- deliberate changes pass only when named with ``--allow-change KEY`` (a config key, a section
  such as ``optim``, or ``dataset``), and never when they change a parameter's shape.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xkd.config import ConfigError, XKDConfig, config_from_dict
from xkd.engine import checkpoint, checkpoint_safety
from xkd.tracking import flatten

# Config keys a resumed run may change freely: logging, checkpoint cadence, where the data lives
# (its content is checked by fingerprint), loader parallelism, tracking, memory/time trade-offs
# that leave the maths unchanged (activation checkpointing, the collective timeout), and the
# periodic probe (it reads the encoders and never changes the training trajectory).
RUN_CONTROL_KEYS = (
    "name", "train.max_steps", "train.log_every_steps", "train.checkpoint_every_steps",
    "train.visualize_every_steps", "train.max_consecutive_nonfinite", "data.shards", "data.num_workers",
    "tracking.", "model.activation_checkpointing", "train.dist_timeout_s", "probe.",
)
DATA_KEY = "dataset"  # --allow-change dataset: accept another data set


class PreflightError(ValueError):
    """A run that must not start; the message says what is wrong and what would work."""


@dataclass
class ResumePlan:
    tag_dir: Path | None  # None: a fresh start
    step: int = 0
    changes: list[str] = field(default_factory=list)  # accepted deliberate changes, readable


def data_fingerprint(samples) -> dict[str, Any]:
    """What identifies a data set wherever it is stored: the sample keys in shard order."""
    digest = hashlib.sha256()
    for ref in samples:
        digest.update(f"{Path(ref.shard).name}\t{ref.key}\n".encode())
    return {"num_samples": len(samples), "num_shards": len({ref.shard for ref in samples}),
            "samples_sha256": digest.hexdigest()}


def _matches(key: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in patterns)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved, current)} for every key that changes the run (run-control keys excluded)."""
    # Compared as JSON (how xkd_meta.json stores them): a tuple and a list of the same values agree.
    old, new = (flatten(json.loads(json.dumps(tree))) for tree in (saved, current))
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key) and not _matches(key, RUN_CONTROL_KEYS)}


def shape_differences(saved: XKDConfig, current: XKDConfig) -> list[str]:
    """Parameters whose shape (or existence) differs between the saved and the current model
    (built on the meta device: no memory, no time)."""
    import torch

    from xkd.models import XKD

    def shapes(config: XKDConfig) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in XKD(config).state_dict().items()}

    old, new = shapes(saved), shapes(current)
    return [f"{k}: {old.get(k)} then, {new.get(k)} now" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def find_resume_tag(checkpoints: Path, resume: str) -> Path | None:
    """The checkpoint tag directory to resume from (``auto``: latest complete; ``none``: fresh)."""
    if resume == "none":
        if checkpoint.latest_complete_tag(checkpoints) is not None:
            raise PreflightError(
                f"--resume none, but {checkpoints} already holds checkpoints that a fresh run would overwrite; "
                "use another --output, --resume auto to continue, or delete that folder")
        return None
    if resume == "auto":
        tag = checkpoint.latest_complete_tag(checkpoints)
        return checkpoints / tag if tag else None
    path = Path(resume)
    if not (path / checkpoint.COMPLETE).is_file():
        found = checkpoint.latest_complete_tag(checkpoints)
        raise PreflightError(f"--resume {resume}: not a complete checkpoint (no {path / checkpoint.COMPLETE}); "
                             f"expected auto, none or a tag directory such as "
                             f"{checkpoints / (found or 'step00001000')}")
    return path


def plan_resume(tag_dir: Path | None, config: XKDConfig, world_size: int, data: dict[str, Any],
                allowed: list[str]) -> ResumePlan:
    """Check a resume against the checkpoint; see the module docstring."""
    if tag_dir is None:
        return ResumePlan(None)
    try:
        checkpoint_safety.check_checkpoint(tag_dir)
        meta = checkpoint.read_meta(tag_dir)
    except (checkpoint_safety.UnsafeCheckpointError, ValueError, OSError, KeyError) as error:
        raise PreflightError(str(error)) from error
    saved_world = meta.get("world_size")
    if saved_world != world_size:
        raise PreflightError(
            f"{tag_dir}: saved with world size {saved_world}, resuming with {world_size}. ZeRO optimizer "
            "partitions cannot be re-split: resume with the same number of ranks, or export fp32 weights with "
            "launch/export_encoders.py and start a new run from them.")
    try:  # through today's schema: keys added since the save compare at their defaults
        saved_config = config_from_dict(meta["config"], source=f"{tag_dir}/{checkpoint.META}")
    except ConfigError as error:
        raise PreflightError(f"cannot resume {tag_dir}: its config no longer loads: {error}") from error
    changes = config_differences(saved_config.to_dict(), config.to_dict())
    if "data" in meta and meta["data"] != data:
        changes[DATA_KEY] = (meta["data"], data)
    refused = [key for key in changes if not _matches(key, allowed)]
    if refused:
        lines = "\n".join(f"  {key}: {changes[key][0]!r} then, {changes[key][1]!r} now" for key in refused)
        raise PreflightError(
            f"refusing to resume {tag_dir} (step {meta['step']}): the run changed since that checkpoint:\n{lines}\n"
            "Restore the original settings, start a new run with another --output, or accept the changes "
            "deliberately with " + " ".join(f"--allow-change {key}" for key in refused))
    if any(key != DATA_KEY for key in changes):
        shapes = shape_differences(saved_config, config)
        if shapes:
            raise PreflightError(
                f"cannot resume {tag_dir} with this config: the model's parameters have other shapes "
                f"({len(shapes)} differ, e.g. {'; '.join(shapes[:3])}); start a new run with another --output")
    accepted = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()]
    return ResumePlan(tag_dir, int(meta["step"]), accepted)


@dataclass
class StartPlan:
    samples: list  # the checked training samples (xkd.data.shard_index.SampleRef)
    data: dict[str, Any]  # data_fingerprint(samples)
    resume: ResumePlan


def check_start(config: XKDConfig, shards: str, output: Path, world_size: int, resume: str = "auto",
                allowed: list[str] | tuple[str, ...] = ()) -> StartPlan:
    """Everything a run checks before its process group starts (launch/pretrain.py, every SLURM
    task, and launch/slurm_submit.py before it submits). Raises :class:`PreflightError`."""
    from xkd.data.loader import training_samples

    try:
        samples = training_samples(config, shards, world_size)
    except (FileNotFoundError, ValueError) as error:
        raise PreflightError(str(error)) from error
    data = data_fingerprint(samples)
    if config.probe.every_steps:
        from xkd.engine.probe import ProbeError, load_sets

        try:
            load_sets(config, warn=False)  # a missing set is skipped (with a warning at start); others refuse
        except ProbeError as error:
            raise PreflightError(str(error)) from error
    tag_dir = find_resume_tag(Path(output) / "checkpoints", resume)
    return StartPlan(samples, data, plan_resume(tag_dir, config, world_size, data, list(allowed)))
