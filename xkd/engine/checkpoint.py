"""Checkpoints: DeepSpeed's engine state plus everything DeepSpeed does not hold.

Layout of ``<run>/checkpoints``::

    step00001000/             one tag per save
        ...                   DeepSpeed files (module, ZeRO optimizer partitions per rank)
        xkd_state.pt          rank 0: teachers + KD centres, step, data position, config
        rng_rank{r}.pt        every rank: python / numpy / torch RNG states
        COMPLETE              written after every rank finished this tag
    latest                    name of the newest COMPLETE tag, replaced atomically

A job killed at any moment (SIGKILL during a save included) leaves ``latest`` pointing at
the last complete tag, from which ``--resume auto`` continues.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"
COMPLETE = "COMPLETE"


def tag_for_step(step: int) -> str:
    return f"step{step:08d}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(engine, directory: Path, step: int, trainer_state: dict[str, Any], rank: int) -> str:
    """Save a complete checkpoint (collective: every rank calls it)."""
    tag = tag_for_step(step)
    tag_dir = directory / tag
    tag_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(rng_state(), tag_dir / f"rng_rank{rank}.pt")
    if rank == 0:
        atomic_torch_save(trainer_state, tag_dir / "xkd_state.pt")
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


def load_trainer_state(tag_dir: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(rank-0 trainer state, this rank's RNG state or None if saved by another world size)."""
    trainer_state = torch.load(tag_dir / "xkd_state.pt", map_location="cpu", weights_only=False)
    rng_file = tag_dir / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=False) if rng_file.is_file() else None
    return trainer_state, rng
