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
    """The device this rank computes on: its GPU when CUDA is present, else the CPU.

    The GPU is chosen by :func:`xkd.devices.local_device_index` (local rank among all visible
    GPUs, or GPU 0 when the task sees only its own, e.g. ``srun --gpus-per-task=1``), made
    current, and refused when the installed torch has no kernels for it."""
    import torch

    if torch.cuda.is_available():
        from xkd.devices import select_cuda_device

        return select_cuda_device(local_rank)
    return torch.device("cpu")


def resolve_device(requested: str = "auto"):
    """The device of this process for a ``--device`` option. ``auto`` / ``cuda``: the GPU made
    current by the process group when one runs, else :func:`accelerator_device` for LOCAL_RANK
    (0 by default), which is the CPU without CUDA; anything else (``cpu``, ``cuda:1``) as given."""
    import torch
    import torch.distributed as dist

    if requested not in ("auto", "cuda"):
        return torch.device(requested)
    if torch.cuda.is_available() and dist.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return accelerator_device(int(os.environ.get("LOCAL_RANK", "0")))


def start_from_environment(timeout_s: float | None = None) -> tuple[int, int]:
    """(rank, world size) of a job whose launcher (torchrun, deepspeed, srun) set WORLD_SIZE > 1,
    starting its process group as pretraining does (:func:`init_process_group`); (0, 1) otherwise."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        init_process_group(discover(), timeout_s)
    return dist.get_rank(), dist.get_world_size()


DEFAULT_TIMEOUT_S = 600.0
RANK_HOSTS_ENV = "XKD_RANK_HOSTS"  # host name of every rank, comma-separated in rank order (set at start-up)


def rank_hosts() -> list[str]:
    """Host name of each rank (index = rank), as gathered by :func:`init_process_group`; [] before."""
    return [host for host in os.environ.get(RANK_HOSTS_ENV, "").split(",") if host]


def init_process_group(env: DistributedEnv, timeout_s: float | None = None) -> None:
    """Start torch.distributed through DeepSpeed: NCCL on GPUs, gloo on CPUs.

    ``timeout_s`` (``train.dist_timeout_s``) bounds the rendezvous and every collective: a peer that
    died (its node crashed, its processes were killed) fails this rank with an error within that
    time instead of hanging the job. Every rank then learns the host name of every other rank
    (``XKD_RANK_HOSTS``), so that logs and MLflow can name nodes.
    """
    import logging
    import time
    from datetime import timedelta

    import deepspeed
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        # set_device before NCCL starts, so that it binds the rank's own GPU; DeepSpeed takes
        # LOCAL_RANK as the GPU index (init_process_group's device_id, the engine's device), which
        # differs from the node-local rank when a task sees only its own GPUs (srun --gpus-per-task).
        os.environ["LOCAL_RANK"] = str(accelerator_device(env.local_rank).index)
    timeout = timedelta(seconds=float(timeout_s or DEFAULT_TIMEOUT_S))
    started = time.monotonic()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout)
    hosts: list[str] = [socket.gethostname()]
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, hosts[0])
        hosts = [str(host) for host in gathered]
    os.environ[RANK_HOSTS_ENV] = ",".join(hosts)
    # Every rank has passed DeepSpeed's comm set-up (the gather above is a collective), so every
    # peer has mapped this rank's shared all-reduce buffer and its name can go.
    unlinked = unlink_cpu_allreduce_buffer()
    if env.is_main:
        logging.getLogger("xkd.distributed").info(
            "process group up in %.2f s: %s, world size %d on %d node(s) (%s), rendezvous %s:%d, timeout %gs",
            time.monotonic() - started, backend, env.world_size, len(set(hosts)), ",".join(sorted(set(hosts))),
            env.master_addr, env.master_port, timeout.total_seconds())
        if unlinked:
            logging.getLogger("xkd.distributed").info(
                "DeepSpeed's CPU all-reduce buffers stay mapped; their names are unlinked from %s", SHARED_MEMORY)


def mean_over_ranks(values: dict) -> dict[str, float]:
    """Each scalar tensor of ``values`` averaged over the ranks, in one all-reduce (the values
    themselves with no process group or one rank)."""
    import torch
    import torch.distributed as dist

    from xkd.devices import collective_device

    names = list(values)
    # NCCL reduces only CUDA tensors; a copy, so the caller's tensors are not changed in place.
    stacked = torch.stack([values[name].detach().float().reshape(()) for name in names]).to(collective_device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(names, stacked.tolist()))


SHARED_MEMORY = "/dev/shm"


def cpu_allreduce_buffer_path(rank: int) -> str:
    """The file of ``rank``'s buffer for DeepSpeed's CPU shared-memory all-reduce (the ``shm_comm`` op,
    used when every rank is on one node): named by user id, rendezvous address and port."""
    return (f"{SHARED_MEMORY}/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def unlink_cpu_allreduce_buffer() -> bool:
    """Remove this rank's DeepSpeed CPU all-reduce buffer name from ``/dev/shm``; True if one was there.

    DeepSpeed creates one 66 MB buffer per rank at comm start-up and never unlinks it, so every CPU
    run (and every test, each on a fresh port) would leave RAM-backed files behind until the machine
    runs out of memory. Unlinking only drops the name: the mappings of running ranks stay valid and
    the memory is freed when the last of them exits, also after a crash or SIGKILL. Call it once every
    rank has finished DeepSpeed's comm set-up (peers open each other's buffer by name), i.e. after a
    collective that follows it.
    """
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_backend() != "gloo":
        return False
    try:
        os.unlink(cpu_allreduce_buffer_path(dist.get_rank()))
    except FileNotFoundError:
        return False
    return True


def describe_peer_failure(error: BaseException) -> str:
    """Which node a collective's error points at: gloo names the peer's address ("Connection closed
    by peer [10.203.0.12]:4242", "Connection reset by peer", timeouts); the address is resolved to a
    host name and the ranks on that host (from :func:`rank_hosts`) are listed."""
    import re

    text = str(error)
    hosts = rank_hosts()
    named = []
    for address in dict.fromkeys(re.findall(r"\[?(\d{1,3}(?:\.\d{1,3}){3})\]?:\d+", text)):
        try:
            host = socket.gethostbyaddr(address)[0]
        except OSError:
            host = address
        ranks = [str(rank) for rank, name in enumerate(hosts) if name == host or name.split(".")[0] == host]
        named.append(f"node {host} ({address}{', ranks ' + ','.join(ranks) if ranks else ''})")
    if named:
        return "peer " + "; ".join(named)
    here = socket.gethostname()
    others = sorted({host for host in hosts if host != here})
    return f"peer on {', '.join(others) if others else 'this node'} (address not in the error)"
