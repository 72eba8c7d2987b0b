"""Checkpoints: DeepSpeed's engine state plus everything DeepSpeed does not hold.

Layout of ``<run>/checkpoints``::

    step00001000/             one tag per save
        ...                   DeepSpeed files (module, ZeRO optimizer partitions per rank)
        xkd_state.pt          rank 0: teachers + KD centres, step, data position, config
        xkd_meta.json         rank 0: step, world size, resolved config, data fingerprint (read
                              before the process group starts, see xkd/engine/preflight.py)
        rng_rank{r}.pt        every rank: python / numpy / torch RNG states, as tensors and lists
        COMPLETE              written after every rank finished this tag
    latest                    name of the newest COMPLETE tag, replaced atomically

A job killed at any moment (SIGKILL during a save included) leaves ``latest`` pointing at
the last complete tag, from which ``--resume auto`` continues. Every file is read back
weights-only after a scan for planted code (:mod:`xkd.engine.checkpoint_safety`).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from xkd.atomic_files import atomic_open, atomic_write_bytes
from xkd.engine import checkpoint_safety

LATEST = "latest"
COMPLETE = "COMPLETE"
META = "xkd_meta.json"


def tag_for_step(step: int) -> str:
    return f"step{step:08d}"


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_open(path) as handle:
        torch.save(obj, handle)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors, tuples and numbers only (loadable weights-only)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys  # older checkpoints: a numpy array
    np.random.set_state((kind, keys.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(engine, directory: Path, step: int, trainer_state: dict[str, Any], meta: dict[str, Any], rank: int) -> str:
    """Save a complete checkpoint (collective: every rank calls it). ``meta`` is the small
    JSON record a resume is checked against before anything heavy starts."""
    tag = tag_for_step(step)
    tag_dir = directory / tag
    tag_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(rng_state(), tag_dir / f"rng_rank{rank}.pt")
    if rank == 0:
        atomic_torch_save(trainer_state, tag_dir / "xkd_state.pt")
        atomic_write_bytes(tag_dir / META, json.dumps({"step": step, **meta}, indent=1).encode())
    engine.save_checkpoint(str(directory), tag=tag, save_latest=False)
    _barrier()
    if rank == 0:
        atomic_write_bytes(tag_dir / COMPLETE, b"ok\n")
        atomic_write_bytes(directory / LATEST, tag.encode())
    _barrier()
    return tag


def latest_complete_tag(directory: Path) -> str | None:
    """The tag ``latest`` names, if it is complete; else the newest complete tag; else None."""
    latest = directory / LATEST
    if latest.is_file():
        tag = latest.read_text().strip()
        if (directory / tag / COMPLETE).is_file():
            return tag
    complete = sorted(p.parent.name for p in directory.glob(f"*/{COMPLETE}"))
    return complete[-1] if complete else None


def read_meta(tag_dir: Path) -> dict[str, Any]:
    """The tag's ``xkd_meta.json``; for checkpoints written before it existed, the same keys
    from ``xkd_state.pt`` (loaded safely)."""
    path = tag_dir / META
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
    state = checkpoint_safety.load(tag_dir / "xkd_state.pt")
    return {key: state[key] for key in ("step", "world_size", "config") if key in state}


def load_trainer_state(tag_dir: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(rank-0 trainer state, this rank's RNG state or None if saved by another world size)."""
    trainer_state = checkpoint_safety.load(tag_dir / "xkd_state.pt")
    rng_file = tag_dir / f"rng_rank{rank}.pt"
    rng = checkpoint_safety.load(rng_file) if rng_file.is_file() else None
    return trainer_state, rng
