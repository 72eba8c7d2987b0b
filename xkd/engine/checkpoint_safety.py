"""Loading checkpoints without running code from them.

A ``.pt`` file is a pickle: ``torch.load(weights_only=False)`` runs whatever a planted file's
``__reduce__`` asks for. Every checkpoint file we or DeepSpeed read is therefore

1. scanned before anything is loaded: the pickle's globals must be torch's weights-only set
   or the few DeepSpeed classes its ZeRO optimizer state holds (:data:`DEEPSPEED_GLOBALS`);
   anything else refuses the whole checkpoint, naming the file and the global;
2. loaded with ``weights_only=True``, also inside DeepSpeed (``load_checkpoint`` and
   ``zero_to_fp32`` pass ``weights_only=False`` explicitly; :func:`weights_only_loads` forces
   it back with torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), so a global pushed dynamically,
   which a static scan cannot see, still fails to load instead of running.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file references code a checkpoint of ours never contains; it was not loaded."""


def _deepspeed_globals() -> list[Any]:
    """Plain-data classes DeepSpeed 0.19 pickles into ZeRO optimizer states (found by scanning
    real ZeRO-1/2/3 checkpoints, fp32/bf16/fp16): constructing them runs no user code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _legacy_numpy_globals() -> list[Any]:
    """numpy arrays, as RNG files written before RNG states were stored as tensors hold them."""
    import numpy as np

    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def allowed_globals() -> list[Any]:
    return _deepspeed_globals() + _legacy_numpy_globals()


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def check_file(path: Path) -> None:
    """Refuse ``path`` unless its pickle references only allowed globals (nothing is loaded)."""
    allowed = {_name(obj) for obj in allowed_globals()}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as error:  # not a torch zip archive, truncated, unreadable pickle
        raise UnsafeCheckpointError(f"{path}: refused: not a readable torch checkpoint ({error})") from error
    unsafe = sorted(set(found) - allowed)
    if unsafe:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it references {', '.join(unsafe)}, which no checkpoint written by xkd or "
            "DeepSpeed contains. Loading it could run arbitrary code; the file was not loaded.")


def check_checkpoint(tag_dir: Path) -> None:
    """Scan every ``.pt`` file of a checkpoint tag directory (see :func:`check_file`)."""
    for path in sorted(Path(tag_dir).rglob("*.pt")):
        check_file(path)


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside the block (DeepSpeed's included) is weights-only, with the
    allowed DeepSpeed classes; a refused file raises :class:`UnsafeCheckpointError`."""
    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            yield
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(f"refused to load a checkpoint file: {error}") from error
    finally:
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


def load(path: Path) -> Any:
    """``torch.load`` of one checkpoint file, scanned first and weights-only, on the CPU."""
    check_file(path)
    with weights_only_loads():
        return torch.load(path, map_location="cpu", weights_only=True)
