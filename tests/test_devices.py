"""Device selection and GPU capability checks (issue 14, items 1-4), on CPU.

The pure decisions of ``xkd.devices`` are tested with given visible-device counts, SLURM
variables, compute capabilities and torch arch lists; the real code paths
(``xkd.distributed.accelerator_device`` / ``init_process_group``, the DALI device check, the
fine-tuning reduction, the trainer's precision check) are driven with a faked CUDA runtime.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from xkd import devices
from xkd.devices import (DeviceError, capability_supported, collective_device, dali_device_error, local_device_index,
                         precision_error, unsupported_gpu_message)

# torch.cuda.get_arch_list() of the default install (CUDA 13 wheels) and of XKD_CUDA=12 (cu126).
CUDA13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CUDA126_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


# ----------------------------------------------------------------------------- item 1 and 3: which GPU


@pytest.mark.parametrize("local_rank", range(8))
def test_every_rank_of_a_full_node_gets_its_own_gpu(local_rank):
    """torchrun / deepspeed / submitit: all 8 GPUs visible, local rank r -> GPU r (not GPU 0 for all)."""
    assert local_device_index(local_rank, visible=8, env={}) == local_rank
    assert local_device_index(local_rank, 8, {"SLURM_LOCALID": str(local_rank), "SLURM_NTASKS": "8"}) == local_rank


@pytest.mark.parametrize("localid", ["0", "3", "7"])
def test_srun_gpus_per_task_1_uses_the_only_visible_gpu(localid):
    """srun --gpus-per-task=1: SLURM_LOCALID counts over the node, but the task sees one GPU: 0."""
    env = {"SLURM_LOCALID": localid, "SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": localid}
    assert local_device_index(int(localid), visible=1, env=env) == 0


def test_srun_gpus_per_task_2_uses_the_tasks_first_gpu():
    env = {"SLURM_LOCALID": "3", "SLURM_GPUS_PER_TASK": "2", "CUDA_VISIBLE_DEVICES": "6,7"}
    assert local_device_index(3, visible=2, env=env) == 0


def test_more_ranks_than_visible_gpus_is_refused_with_what_to_do():
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_LOCALID": "5"}
    with pytest.raises(DeviceError, match=r"local rank 5 needs GPU 5, but only 2 GPUs are visible.*gpus-per-task=1"):
        local_device_index(5, visible=2, env=env)
    with pytest.raises(DeviceError, match="no GPU is visible"):
        local_device_index(0, visible=0, env={"CUDA_VISIBLE_DEVICES": ""})


class FakeCuda:
    """What xkd.devices asks the CUDA runtime, for a machine that has none."""

    def __init__(self, monkeypatch, count=8, capability=(9, 0), archs=CUDA13_ARCHS, name="NVIDIA H100"):
        self.current = 0
        self.set_calls = []
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: count)
        monkeypatch.setattr(cuda, "set_device", self.set_device)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(cuda, "get_device_name", lambda index=None: name)
        monkeypatch.setattr(cuda, "get_arch_list", lambda: list(archs))
        monkeypatch.setattr(torch.version, "cuda", "13.0")

    def set_device(self, index):
        self.set_calls.append(index)
        self.current = index


def test_accelerator_device_uses_slurm_task_gpu(monkeypatch):
    from xkd.distributed import accelerator_device

    fake = FakeCuda(monkeypatch, count=1)
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert accelerator_device(3) == torch.device("cuda", 0) and fake.set_calls == [0]
    fake = FakeCuda(monkeypatch, count=8)
    monkeypatch.delenv("SLURM_LOCALID")
    monkeypatch.delenv("SLURM_GPUS_PER_TASK", raising=False)
    assert accelerator_device(5) == torch.device("cuda", 5) and fake.set_calls == [5]


def test_resolve_device_is_the_one_choice_for_evaluation_and_fine_tuning(monkeypatch):
    """--device of eval/ and fine-tuning: explicit devices as given; auto picks the rank's GPU as
    pretraining does (LOCAL_RANK, made current), or the GPU of a running process group; CPU without CUDA."""
    from xkd.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cuda:1") == torch.device("cuda", 1)
    fake = FakeCuda(monkeypatch, count=8)
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    monkeypatch.delenv("SLURM_GPUS_PER_TASK", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3) and fake.set_calls == [3]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    fake.current = 6  # the process group's device wins
    assert resolve_device("cuda") == torch.device("cuda", 6) and fake.set_calls == [3]
    assert resolve_device("cpu") == torch.device("cpu")


def test_init_process_group_sets_the_device_before_nccl_and_tells_deepspeed(monkeypatch):
    """set_device happens before the process group starts; DeepSpeed reads LOCAL_RANK as the GPU index."""
    import deepspeed

    from xkd.distributed import DistributedEnv, init_process_group

    fake = FakeCuda(monkeypatch, count=1)
    seen = {}

    def init_distributed(dist_backend, **_):
        seen.update(backend=dist_backend, current=fake.current, local_rank=os.environ["LOCAL_RANK"])

    monkeypatch.setattr(deepspeed, "init_distributed", init_distributed)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("XKD_RANK_HOSTS", "")  # restored afterwards (init_process_group sets it)
    init_process_group(DistributedEnv(rank=3, world_size=4, local_rank=3, master_addr="h", master_port=1,
                                      launcher="slurm"))
    assert seen == {"backend": "nccl", "current": 0, "local_rank": "0"} and fake.set_calls == [0]


def test_dali_pipeline_is_built_on_the_current_device(monkeypatch):
    from xkd.data.dali_pipeline import check_pipeline_device, pipeline_device_id

    fake = FakeCuda(monkeypatch)
    fake.current = 3
    assert pipeline_device_id("gpu") == 3 and pipeline_device_id("cpu") is None

    class Built:
        device_id = 0

    with pytest.raises(DeviceError, match="built on GPU 0, but this rank's device is cuda:3"):
        check_pipeline_device(Built(), "gpu")
    Built.device_id = 3
    check_pipeline_device(Built(), "gpu")
    check_pipeline_device(Built(), "cpu")  # the CPU backend has no device to check
    assert dali_device_error(3, 3) is None


# ----------------------------------------------------------------------------- item 2: collectives on the device


def test_collectives_run_on_the_backends_device(monkeypatch):
    assert collective_device() == torch.device("cpu")  # no process group
    FakeCuda(monkeypatch).current = 2
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    assert collective_device() == torch.device("cuda", 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert collective_device() == torch.device("cpu")


def test_mean_over_ranks_reduces_on_the_collective_device(monkeypatch):
    """Pretraining's log record and fine-tuning's epoch loss (a CPU float64 tensor) are averaged by
    one function, which moves them to the collective device before the all-reduce and leaves the
    caller's tensors alone."""
    from xkd.distributed import mean_over_ranks

    reduced = []

    def all_reduce(tensor, *args, **kwargs):
        reduced.append((tensor.device, tensor.dtype, tuple(tensor.shape)))
        tensor.mul_(2)  # two ranks with the same values

    monkeypatch.setattr(devices, "collective_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    loss, term = torch.tensor(1.5, dtype=torch.float64), torch.tensor([0.25])
    assert mean_over_ranks({"loss": loss, "term": term}) == {"loss": pytest.approx(1.5), "term": pytest.approx(0.25)}
    assert reduced == [(torch.device("cpu"), torch.float32, (2,))]  # one all-reduce for every value
    assert float(loss) == 1.5 and float(term) == 0.25  # the caller's tensors are not changed in place
    placed = []
    monkeypatch.setattr(devices, "collective_device", lambda: placed.append(1) or torch.device("cpu"))
    mean_over_ranks({"loss": loss})
    assert placed == [1]  # the placement is asked of collective_device (cuda:N under NCCL)


# ----------------------------------------------------------------------------- item 4: capability and bf16


@pytest.mark.parametrize("capability,archs,ok", [
    ((7, 0), CUDA13_ARCHS, False),  # V100 on the default install
    ((7, 0), CUDA126_ARCHS, True),  # V100 on XKD_CUDA=12
    ((7, 5), CUDA13_ARCHS, True),
    ((8, 0), CUDA13_ARCHS, True),
    ((8, 6), ["sm_80"], True),  # same-major cubin runs on a newer minor
    ((8, 9), CUDA13_ARCHS, True),
    ((9, 0), CUDA13_ARCHS, True),
    ((10, 0), CUDA13_ARCHS, True),
    ((12, 1), CUDA13_ARCHS, True),
    ((9, 0), ["sm_80", "compute_80"], True),  # PTX is JIT-compiled for a newer GPU
    ((9, 0), ["sm_80", "sm_86"], False),  # cubins of another major only
    ((6, 1), ["sm_70", "compute_70"], False),  # PTX for a newer GPU does not run on an older one
    ((9, 0), ["sm_90a"], True),
])
def test_capability_against_the_torch_arch_list(capability, archs, ok):
    assert capability_supported(capability, archs) is ok


def test_v100_on_the_default_install_names_the_install_command():
    message = unsupported_gpu_message("Tesla V100-SXM2-32GB", (7, 0), CUDA13_ARCHS, "13.0")
    assert "7.0" in message and "XKD_CUDA=12 bash scripts/setup_env.sh" in message and "sm_75" in message
    assert unsupported_gpu_message("Tesla V100-SXM2-32GB", (7, 0), CUDA126_ARCHS, "12.6") is None
    assert unsupported_gpu_message("any", (7, 0), [], None) is None  # torch cannot tell: torch reports


def test_accelerator_device_refuses_a_gpu_torch_cannot_run(monkeypatch):
    from xkd.distributed import accelerator_device

    FakeCuda(monkeypatch, count=8, capability=(7, 0), name="Tesla V100-SXM2-32GB")
    with pytest.raises(DeviceError, match="XKD_CUDA=12 bash scripts/setup_env.sh"):
        accelerator_device(0)
    FakeCuda(monkeypatch, count=8, capability=(7, 0), archs=CUDA126_ARCHS)
    assert accelerator_device(1) == torch.device("cuda", 1)


def test_bf16_below_compute_8_is_refused_naming_fp16():
    message = precision_error("bf16", "cuda", (7, 0), "Tesla V100")
    assert "train.precision=fp16" in message and "7.0" in message
    assert precision_error("bf16", "cuda", (8, 0)) is None
    assert precision_error("fp16", "cuda", (7, 0)) is None
    assert precision_error("bf16", "cpu", None) is None
    assert "precision=fp16" in precision_error("bf16", "cuda", (7, 5), key="precision")


def test_require_precision_reads_the_devices_capability(monkeypatch):
    FakeCuda(monkeypatch, capability=(7, 0), name="Tesla V100")
    with pytest.raises(DeviceError, match="train.precision=fp16"):
        devices.require_precision("bf16", torch.device("cuda", 0))
    devices.require_precision("fp16", torch.device("cuda", 0))
    devices.require_precision("bf16", torch.device("cpu"))


def test_finetune_refuses_bf16_on_a_v100_and_unknown_precisions(monkeypatch):
    from xkd.evaluation.errors import EvalInputError
    from xkd.evaluation.finetune import FinetuneConfig, finetune

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(EvalInputError, match="precision 'fp64'"):
        finetune(None, None, None, "audio", None, FinetuneConfig(precision="fp64"))
    FakeCuda(monkeypatch, count=1, capability=(7, 0), archs=CUDA126_ARCHS, name="Tesla V100")
    with pytest.raises(EvalInputError, match="precision=bf16 needs compute capability >= 8.0.*set precision=fp16"):
        finetune(None, None, None, "audio", None, FinetuneConfig(precision="bf16"))


def test_tf32_is_a_gpu_precision_from_ampere_and_restores_torch_defaults():
    import torch

    from xkd.devices import computed_precision, tf32_matmuls

    assert computed_precision("tf32", "cuda", (8, 0)) == "tf32"  # A100
    assert computed_precision("tf32", "cuda", (7, 0)) == "fp32"  # V100: no TF32 units
    assert computed_precision("tf32", "cpu", None) == "fp32"
    assert computed_precision("bf16", "cpu", None) == "fp32" and computed_precision("fp16", "cuda", (7, 0)) == "fp16"
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32_matmuls(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with tf32_matmuls(False):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
