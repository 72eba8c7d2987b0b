"""Rank discovery and process-group start-up for every way the job is launched.

- ``deepspeed`` launcher / ``torchrun``: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT are set.
- ``srun`` / submitit on SLURM: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the rendezvous
  host is the first node of the allocation (submitit's TorchDistributedEnvironment exports
  the same variables when it is used).
- a plain ``python launch/pretrain.py``: one process, rank 0 of 1, a free local port.

Everything is exported as the torch.distributed env:// variables before DeepSpeed starts.
"""
from __future__ import annotations

import os
import random
import socket
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# Rendezvous ports are derived from the job id, so every task agrees without talking first.
# They stay below Linux's default ephemeral range (32768-60999): a port in that range may be
# held at any moment by some outgoing connection on the node (EADDRINUSE at start-up).
RENDEZVOUS_PORTS = (15000, 32767)


def rendezvous_port(job_id: str, restart: int = 0) -> int:
    """The same port on every task of a job; another one after a requeue, so a restarted job
    never meets the previous run's sockets."""
    return random.Random(f"{job_id}:{restart}").randint(*RENDEZVOUS_PORTS)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_master_addr() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], check=True, capture_output=True,
                               text=True).stdout.split()
        if hosts:
            return hosts[0]
    except (OSError, subprocess.CalledProcessError):
        pass
    return os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1")


def discover(local_rank_arg: int | None = None) -> DistributedEnv:
    """Rank, world size and rendezvous from the environment; exported for env:// initialisation."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        # submitit tasks (xkd/slurm.py) export these from the SLURM / local job environment.
        launcher = f"submitit-{env['SUBMITIT_EXECUTOR']}" if env.get("SUBMITIT_EXECUTOR") else "torchrun/deepspeed"
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0))
        addr, port = env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        launcher = "slurm"
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        addr = env.get("MASTER_ADDR") or _slurm_master_addr()
        restart = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
        port = int(env.get("MASTER_PORT") or rendezvous_port(env.get("SLURM_JOB_ID", "0"), restart))
    else:
        launcher = "single"
        rank, world, local = 0, 1, 0
        addr, port = "127.0.0.1", _free_port()
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local),
                       "MASTER_ADDR": addr, "MASTER_PORT": str(port)})
    return DistributedEnv(rank, world, local, addr, port, launcher)


def accelerator_device(local_rank: int):
    """The device this rank computes on: its GPU when CUDA is present, else the CPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_process_group(env: DistributedEnv) -> None:
    """Start torch.distributed through DeepSpeed: NCCL on GPUs, gloo on CPUs."""
    import deepspeed
    import torch

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
