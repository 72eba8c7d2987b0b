"""Which GPU a rank uses, and whether the installed torch can run it (issue 14, items 1, 3, 4).

The decisions are pure functions of what the process sees (visible GPU count, local rank,
SLURM variables, compute capability, torch's compiled arch list), so that they are tested on
CPU-only machines; :func:`select_cuda_device` and :func:`require_precision` apply them to the
real CUDA runtime.

- **One GPU per rank.** torchrun / the deepspeed launcher / submitit keep every GPU of the node
  visible: local rank ``r`` uses visible GPU ``r``. ``srun --gpus-per-task=N`` (or any binding
  that gives a task its own GPUs) leaves each task its own ``N`` visible GPUs while
  ``SLURM_LOCALID`` keeps counting over the node: such a task uses its first visible GPU, 0.
  Every later consumer (DALI's ``device_id``, DDP's ``device_ids``, DeepSpeed, NCCL) reads
  ``torch.cuda.current_device()``, which :func:`select_cuda_device` sets before the process
  group starts.
- **Compute capability.** A GPU runs a torch build if the build has a cubin of the same major
  architecture and a minor version not above the GPU's (``sm_80`` runs on 8.6), or PTX
  (``compute_XY``) of an architecture not above it (JIT). The default install (CUDA 13 wheels)
  has no Volta (7.0) kernels: such a GPU is refused at start-up with the install command.
- **bf16** needs compute capability 8.0 (Ampere); below it the run is refused with the setting
  to use (``train.precision=fp16``), rather than silently emulated or switched.
"""
from __future__ import annotations

from contextlib import contextmanager

import logging
import os
import re
from typing import Mapping

log = logging.getLogger(__name__)

# The install that brings kernels for older GPUs (Volta, sm_70): torch from PyTorch's cu126 index.
LEGACY_INSTALL = "XKD_CUDA=12 bash scripts/setup_env.sh"
BF16_MIN_CAPABILITY = (8, 0)

_ARCH = re.compile(r"^(sm|compute)_(\d+)(\d)([a-z]?)$")


class DeviceError(RuntimeError):
    """This rank cannot use the GPU it was given (or any GPU) as configured; the message says what to do."""


# ----------------------------------------------------------------------------- pure decisions


def parse_arch(arch: str) -> tuple[str, int, int] | None:
    """``"sm_86"`` -> ("sm", 8, 6); ``"sm_100"`` -> ("sm", 10, 0); ``"compute_90a"`` -> ("compute", 9, 0)."""
    match = _ARCH.match(arch.strip())
    if not match:
        return None
    return match.group(1), int(match.group(2)), int(match.group(3))


def capability_supported(capability: tuple[int, int], arch_list: list[str] | tuple[str, ...]) -> bool:
    """Whether a torch built for ``arch_list`` (``torch.cuda.get_arch_list()``) runs on a GPU of ``capability``."""
    major, minor = capability
    for arch in arch_list:
        parsed = parse_arch(arch)
        if parsed is None:
            continue
        kind, a_major, a_minor = parsed
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True  # same-major cubin, binary compatible
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True  # PTX, JIT-compiled for the newer GPU
    return False


def unsupported_gpu_message(name: str, capability: tuple[int, int], arch_list: list[str] | tuple[str, ...],
                            cuda_version: str | None = None) -> str | None:
    """None when the installed torch runs this GPU, else the error to show (with the install to use)."""
    if not arch_list or capability_supported(capability, arch_list):
        return None  # an empty list: torch cannot tell (e.g. no CUDA build); torch itself will report
    major, minor = capability
    built = f"CUDA {cuda_version}" if cuda_version else "this CUDA"
    fix = (f"reinstall with `{LEGACY_INSTALL}` (torch from PyTorch's cu126 index, which still has sm_70 kernels)"
           if (major, minor) < (7, 5) else
           "install a torch build whose arch list includes this GPU (see README, 'GPU clusters')")
    return (f"GPU {name!r} has compute capability {major}.{minor}, but the installed torch ({built} build) has "
            f"kernels only for {', '.join(arch_list)}: it cannot run on this GPU. {fix}.")


def bf16_supported(capability: tuple[int, int]) -> bool:
    """True bf16 arithmetic (tensor cores, not emulation) needs Ampere or newer."""
    return tuple(capability) >= BF16_MIN_CAPABILITY


def precision_error(precision: str, device_type: str, capability: tuple[int, int] | None,
                    name: str = "this GPU", key: str = "train.precision") -> str | None:
    """None when ``precision`` runs on the device, else the error naming the setting to change."""
    if precision != "bf16" or device_type != "cuda" or capability is None or bf16_supported(capability):
        return None
    return (f"{key}=bf16 needs compute capability >= {BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]}, but "
            f"{name} has {capability[0]}.{capability[1]} (e.g. V100): set {key}=fp16 (dynamic loss scaling) "
            f"or {key}=fp32")


def local_device_index(local_rank: int, visible: int, env: Mapping[str, str] | None = None) -> int:
    """Index among the *visible* GPUs of the GPU that the rank with ``local_rank`` uses.

    ``visible``: ``torch.cuda.device_count()`` (which honours ``CUDA_VISIBLE_DEVICES``).
    ``env``: the process environment (``SLURM_GPUS_PER_TASK`` tells that the visible GPUs are
    the task's own).
    """
    env = os.environ if env is None else env
    if visible < 1:
        raise DeviceError("no GPU is visible to this process (CUDA_VISIBLE_DEVICES="
                          f"{env.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})")
    if local_rank < 0:
        raise DeviceError(f"local rank {local_rank}: expected a non-negative integer")
    if visible == 1:
        return 0  # srun --gpus-per-task=1, or one GPU per node: the task's only GPU
    per_task = env.get("SLURM_GPUS_PER_TASK", "").strip()
    if per_task.isdigit() and int(per_task) == visible and "SLURM_LOCALID" in env:
        return 0  # the task's own GPUs (bound by SLURM); SLURM_LOCALID counts over the node
    if local_rank < visible:
        return local_rank  # every GPU of the node visible: one per local rank
    raise DeviceError(
        f"local rank {local_rank} needs GPU {local_rank}, but only {visible} GPUs are visible "
        f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}, "
        f"SLURM_LOCALID={env.get('SLURM_LOCALID', '<unset>')!r}, "
        f"SLURM_GPUS_PER_TASK={env.get('SLURM_GPUS_PER_TASK', '<unset>')!r}): start one task per GPU "
        "(srun --gpus-per-task=1, or --ntasks-per-node equal to the GPUs per node)")


def dali_device_error(pipeline_device_id: int | None, current: int) -> str | None:
    """A GPU DALI pipeline must decode on the rank's own GPU (not GPU 0 for every rank)."""
    if pipeline_device_id == current:
        return None
    return (f"DALI pipeline built on GPU {pipeline_device_id}, but this rank's device is cuda:{current}: every "
            "rank would decode on the same GPU and copy across GPUs")


# ----------------------------------------------------------------------------- runtime


def select_cuda_device(local_rank: int, check_arch: bool = True):
    """Pick this rank's GPU (:func:`local_device_index`), make it current, check that torch can run
    it, and return it as a ``torch.device``. Call before the process group starts."""
    import torch

    index = local_device_index(local_rank, torch.cuda.device_count())
    torch.cuda.set_device(index)
    if check_arch:
        message = unsupported_gpu_message(torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index),
                                          torch.cuda.get_arch_list(), torch.version.cuda)
        if message:
            raise DeviceError(message)
    return torch.device("cuda", index)


TF32_MIN_CAPABILITY = (8, 0)  # Ampere: TF32 tensor cores


def computed_precision(precision: str, device_type: str, capability: tuple[int, int] | None) -> str:
    """The precision a forward pass really runs in: autocast (bf16, fp16) and TF32 act on CUDA only,
    and TF32 only from compute 8.0 (below, ``tf32`` is plain fp32). Part of cached features' identity."""
    if device_type != "cuda":
        return "fp32"
    if precision == "tf32" and (capability is None or tuple(capability) < TF32_MIN_CAPABILITY):
        return "fp32"
    return precision


@contextmanager
def tf32_matmuls(enabled: bool):
    """TF32 tensor-core matmuls and convolutions inside the block (fp32 storage, 10-bit mantissa
    products): ``precision: tf32`` for evaluation on A100/H100, about 2-8x faster than full fp32
    there. torch's defaults (matmul off, cuDNN on) come back afterwards."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def require_precision(precision: str, device, key: str = "train.precision") -> None:
    """Refuse ``precision`` on ``device`` when the GPU cannot run it (bf16 below compute 8.0)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    message = precision_error(precision, "cuda", torch.cuda.get_device_capability(index),
                              torch.cuda.get_device_name(index), key)
    if message:
        raise DeviceError(message)


def collective_device():
    """Where tensors for torch.distributed collectives must live: the current GPU under NCCL,
    the CPU under gloo (or with no process group)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
