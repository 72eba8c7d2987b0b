"""Pretraining as a SLURM job through submitit (or on this machine with submitit's LocalExecutor).

One SLURM task per GPU (``--ntasks-per-node`` = GPUs per node; CPU mode: any number of tasks,
gloo). Each task runs :class:`PretrainTask`, which takes rank, local rank, world size and the
rendezvous (first node of the allocation) from the job environment
(``submitit.helpers.TorchDistributedEnvironment``) and calls :func:`xkd.engine.run.pretrain`
in-process, the same function as ``launch/pretrain.py``. No ssh/pdsh and no deepspeed launcher.

Requeue and signals, in each task:

- SLURM's time-limit warning (``#SBATCH --signal=USR2@<signal_delay_s>``, submitit's preemption
  signal, or USR1): the trainer saves a checkpoint at the next step on every rank, then rank 0
  requeues the job (``scontrol requeue``; submitit's LocalExecutor restarts the tasks) and the
  tasks exit without a result. The requeued job runs the same task with ``--resume auto``: it
  continues from that checkpoint, and the MLflow run continues (``<run>/mlflow_run_id``).
- SIGTERM (preemption, ``scontrol requeue``, ``scancel``): checkpoint at the next step and exit;
  the scheduler decides what comes next (requeued jobs resume the same way, cancelled ones can be
  submitted again with the same ``--output``).

submitit's own USR2 handler (which requeues from inside the signal handler, before our trainer
could checkpoint) is replaced by ours once the task starts.

Node failures (multi-node jobs): a collective whose peer is gone fails within
``train.dist_timeout_s``; the surviving task logs the lost node (:func:`is_peer_failure`,
``xkd.distributed.describe_peer_failure``), requeues the job and exits. When a whole node dies,
srun may end the step before any task notices: the batch script's teardown (:func:`after_step`)
then finds the node not responding, names it and requeues. The requeued job starts when enough
nodes are up and resumes from the last complete checkpoint.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import submitit
from submitit.helpers import Checkpointable

ROOT = Path(__file__).resolve().parents[1]
WARNING_SIGNALS = ("SIGUSR1", "SIGUSR2")  # time-limit warnings: requeue yourself
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED", "REVOKED")


class SubmitError(Exception):
    """Something is wrong with the request; raised before anything is submitted."""


# ----------------------------------------------------------------------------- the task (runs on the nodes)


def resume_latest(argv: list[str]) -> list[str]:
    """``argv`` with ``--resume auto``: a requeued or restarted job continues from its latest checkpoint."""
    argv = list(argv)
    if "--resume" in argv:
        argv[argv.index("--resume") + 1] = "auto"
        return argv
    return argv + ["--resume", "auto"]


class PretrainTask(Checkpointable):
    """The submitit callable: one pretraining rank. ``argv`` are launch/pretrain.py's arguments
    (``--resume`` as given for the first start, ``auto`` after a requeue), so running it again continues the run."""

    def __init__(self, argv: list[str], max_requeues: int = 10):
        self.argv = list(argv)
        self.max_requeues = max_requeues

    def __call__(self) -> dict[str, Any]:
        from xkd.distributed import rendezvous_port
        from xkd.engine.stop import StopRequest

        # Replaces submitit's SIGTERM/USR2 handlers: every signal becomes "checkpoint at the next step".
        stop = StopRequest(signals=(signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2))
        job_env = submitit.JobEnvironment()
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        os.environ["MASTER_PORT"] = str(rendezvous_port(job_env.job_id, restart))
        # Rank, local rank, world size and the first node as rendezvous host, for env:// (and DeepSpeed).
        # All GPUs of the node stay visible; xkd.distributed picks cuda:<local rank>.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        argv = self.argv if restart == 0 else resume_latest(self.argv)  # --resume TAG/none was for the first start
        print(f"[xkd.slurm] {job_env} restart {restart}: launch/pretrain.py {shlex.join(argv)}", flush=True)

        from xkd.engine.run import pretrain

        try:
            outcome = pretrain(argv, stop=stop)
        except Exception as error:
            if is_peer_failure(error):
                self._lost_peer(error, job_env, restart)
            raise
        if outcome.exit_code != 0:
            raise RuntimeError(f"pretraining refused to start (exit code {outcome.exit_code}); see the task's stderr")
        if outcome.completed:
            return {**asdict(outcome), "hostname": socket.gethostname(), "restart": restart}
        self._stopped(outcome, stop.received, job_env, restart)
        raise AssertionError("unreachable")

    def _lost_peer(self, error: BaseException, job_env, restart: int) -> None:
        """A collective failed because another rank is gone (its node crashed, its processes were
        killed, or it stopped answering for ``train.dist_timeout_s``): name the node in the log,
        requeue the job (SLURM restarts it once enough nodes are up; it resumes from the last
        complete checkpoint) and exit with an error."""
        from xkd.distributed import describe_peer_failure

        here = f"rank {job_env.global_rank} on {socket.gethostname()}"
        first_line = str(error).strip().splitlines()[0][:400] if str(error).strip() else type(error).__name__
        print(f"[xkd.slurm] {here}: lost a peer of job {job_env.job_id}: {describe_peer_failure(error)}; "
              f"{type(error).__name__}: {first_line}", file=sys.stderr, flush=True)
        from submitit.slurm.slurm import SlurmJobEnvironment

        if not isinstance(job_env, SlurmJobEnvironment):
            raise SystemExit(f"[xkd.slurm] {here}: peer lost; not a SLURM job, nothing requeued") from error
        if restart >= self.max_requeues:
            raise SystemExit(f"[xkd.slurm] {here}: peer lost; NOT requeued: already restarted {restart} times "
                             f"(max_requeues={self.max_requeues})") from error
        # Every surviving rank asks; the first request requeues the job, the others find it pending.
        result = subprocess.run(["scontrol", "requeue", str(job_env.job_id)], capture_output=True, text=True)
        outcome = "requeued" if result.returncode == 0 else f"requeue: {result.stderr.strip() or result.returncode}"
        print(f"[xkd.slurm] {here}: job {job_env.job_id} {outcome}; it resumes from the last complete checkpoint "
              "when its nodes are available", file=sys.stderr, flush=True)
        raise SystemExit(f"[xkd.slurm] {here}: peer lost, job {job_env.job_id} requeued") from error

    def _stopped(self, outcome, received: list[str], job_env, restart: int) -> None:
        """Stopped by a signal with a checkpoint at ``outcome.step``: requeue on a time-limit warning
        (rank 0), then exit without a result so that the job is not reported as done."""
        where = f"stopped by {'/'.join(received) or 'a signal on another rank'} at step {outcome.step}" \
                f"/{outcome.max_steps}, checkpoint saved in {outcome.output}"
        warned = any(name in WARNING_SIGNALS for name in received)
        if not warned:
            raise SystemExit(f"[xkd.slurm] {where}; exiting (the scheduler requeues or cancels the job)")
        if job_env.global_rank != 0:
            raise SystemExit(f"[xkd.slurm] {where}; rank 0 requeues the job")
        if restart >= self.max_requeues:
            raise SystemExit(f"[xkd.slurm] {where}; NOT requeued: already restarted {restart} times "
                             f"(max_requeues={self.max_requeues}). Submit the same command again to resume.")
        print(f"[xkd.slurm] {where}; requeueing job {job_env.job_id}", flush=True)
        try:
            job_env._requeue(self.max_requeues - restart - 1)  # SLURM: scontrol requeue; local: exits for a restart
        except (OSError, subprocess.SubprocessError) as error:
            raise SystemExit(f"[xkd.slurm] {where}; requeue failed ({error}). Submit the same command again "
                             "to resume.") from error
        raise SystemExit(f"[xkd.slurm] job {job_env.job_id} requeued; it resumes from step {outcome.step}")


PEER_FAILURE_PATTERNS = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
                         "timeout", "connection refused", "no route to host", "nccl", "gloo", "socket")


def is_peer_failure(error: BaseException) -> bool:
    """An error of a collective (gloo/NCCL) because another rank is gone, not a bug of this rank."""
    try:
        from torch.distributed import DistError
    except ImportError:  # older torch
        DistError = ()  # noqa: N806
    if DistError and isinstance(error, DistError):
        return True
    text = str(error).lower()
    return isinstance(error, (RuntimeError, ConnectionError, TimeoutError)) and any(
        pattern in text for pattern in PEER_FAILURE_PATTERNS)


def lost_nodes(timeout_s: float = 5.0) -> dict[str, str]:
    """Nodes of this job (``$SLURM_JOB_NODELIST``) that are gone: slurmctld lists them as down /
    not responding, or their slurmd does not accept a connection. {node: why}."""
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ.get("SLURM_JOB_NODELIST", "")],
                           capture_output=True, text=True).stdout.split()
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    port = int((re.search(r"^SlurmdPort\s*=\s*(\d+)", config, re.M) or [None, 6818])[1])
    lost = {}
    for node in nodes:
        state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if state.endswith("*") or state.startswith(("down", "fail", "drain")):
            lost[node] = f"slurmctld: {state}"
            continue
        try:
            with socket.create_connection((node, port), timeout=timeout_s):
                pass
        except OSError as error:
            lost[node] = f"slurmd port {port}: {error or type(error).__name__}"
    return lost


def after_step(status: int, max_requeues: int) -> int:
    """Run by the batch script after srun: when the step failed and a node of the job is gone (a
    node crash kills its tasks and srun then ends the others), log the node and requeue the job."""
    if status == 0:
        return 0
    job = os.environ.get("SLURM_JOB_ID", "?")
    lost = lost_nodes()
    here = f"batch script on {socket.gethostname()}"
    if not lost:
        print(f"[xkd.slurm] {here}: step of job {job} ended with exit {status}; every node answers (no node "
              "failure to requeue for)",
              file=sys.stderr, flush=True)
        return status
    named = "; ".join(f"node {node} ({why})" for node, why in lost.items())
    print(f"[xkd.slurm] {here}: lost a peer of job {job}: {named}; step exit {status}", file=sys.stderr, flush=True)
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if restart >= max_requeues:
        print(f"[xkd.slurm] {here}: NOT requeued: already restarted {restart} times (max_requeues={max_requeues})",
              file=sys.stderr, flush=True)
        return status
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    outcome = "requeued" if result.returncode == 0 else f"requeue: {result.stderr.strip() or result.returncode}"
    print(f"[xkd.slurm] {here}: job {job} {outcome}; it resumes from the last complete checkpoint when its nodes "
          "are available", file=sys.stderr, flush=True)
    return status


# ----------------------------------------------------------------------------- the request (login node)


@dataclass
class JobSpec:
    """Resources and scheduling of a pretraining job (the CLI's options)."""

    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int | None = None  # default: gpus_per_node (one task per GPU), 1 without GPUs
    cpus_per_task: int | None = None  # default: 10 with GPUs, 1 without
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 72 * 60
    mem: str | None = None
    constraint: str | None = None
    job_name: str = "xkd"
    signal_delay_s: int = 120
    max_requeues: int = 10
    sbatch_extra: dict[str, str] = field(default_factory=dict)

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    @property
    def cpus(self) -> int:
        return self.cpus_per_task or (10 if self.gpus_per_node else 1)


def parse_time(text: str) -> int:
    """SLURM time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> whole minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise SubmitError(f"--time {text!r}: expected minutes or [D-]HH:MM[:SS] (e.g. 90, 2:00:00, 3-00:00:00)")
    days, a, b, c = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:
        seconds = int(a) * 60
    if seconds <= 0:
        raise SubmitError(f"--time {text!r}: must be positive")
    return max(1, math.ceil(seconds / 60))


def check_spec(spec: JobSpec) -> None:
    if spec.nodes < 1:
        raise SubmitError(f"--nodes {spec.nodes}: expected at least 1")
    if spec.gpus_per_node < 0:
        raise SubmitError(f"--gpus-per-node {spec.gpus_per_node}: expected 0 (CPU) or more")
    if spec.gpus_per_node and spec.tasks_per_node not in (None, spec.gpus_per_node):
        raise SubmitError(f"--tasks-per-node {spec.tasks_per_node} with --gpus-per-node {spec.gpus_per_node}: "
                          "the job runs one task per GPU; leave --tasks-per-node out (or use --gpus-per-node 0 "
                          "for a CPU job)")
    if spec.ntasks_per_node < 1 or spec.cpus < 1:
        raise SubmitError("--tasks-per-node and --cpus-per-task must be at least 1")


def task_argv(config: str, ds_config: str, output: str, data: str | None = None, max_steps: int = 0,
              overrides: list[str] | tuple[str, ...] = (), allow_change: list[str] | tuple[str, ...] = (),
              resume: str = "auto") -> list[str]:
    """launch/pretrain.py arguments of every task. ``resume`` is for the first start: a requeued
    job resumes ``auto`` (see :meth:`PretrainTask.__call__`)."""
    argv = ["--config", config, "--ds_config", ds_config, "--output", output, "--resume", resume]
    if data:
        argv += ["--data", data]
    if max_steps:
        argv += ["--max-steps", str(max_steps)]
    for key in allow_change:
        argv += ["--allow-change", key]
    return argv + list(overrides)


def check_start_before_submit(config, data: str | None, output: Path, world_size: int,
                              allow_change: list[str] | tuple[str, ...] = (), resume: str = "auto") -> None:
    """The checks every task makes before its process group starts (data, resume), made here
    first so that a bad --data or a changed run fails now, not after the queue wait."""
    from xkd.config import ConfigError
    from xkd.engine.ds_config import with_micro_batch
    from xkd.engine.preflight import PreflightError, check_start
    from xkd.engine.run import shards_from_repo_root

    try:
        # As every task does: the micro-batch derived for this world size is part of the run (checkpoints store it).
        config = with_micro_batch(config, world_size)
        check_start(config, shards_from_repo_root(data or config.data.shards), output, world_size, resume, allow_change)
    except (PreflightError, ConfigError) as error:
        raise SubmitError(f"{error}; nothing was submitted") from error


def check_inputs(config: str, ds_config: str, overrides: list[str], world_size: int):
    """Fail before submitting: the files exist, the config and its overrides validate, and the
    DeepSpeed batch sizes fit ``world_size`` ranks. Returns the loaded config."""
    from xkd.config import ConfigError, load_config
    from xkd.engine.ds_config import resolve_ds_config

    for option, path, what in (("--config", config, "an experiment YAML, e.g. configs/tiny.yaml"),
                               ("--ds_config", ds_config, "a DeepSpeed JSON, e.g. ds_configs/zero2.json")):
        if not Path(path).is_file():
            raise SubmitError(f"{option} {path}: no such file (expected {what}); nothing was submitted")
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise SubmitError(f"overrides must look like key.sub=value, got {bad}; nothing was submitted")
    try:
        loaded = load_config(config, overrides)
        resolve_ds_config(ds_config, loaded, world_size, config_source=config)
    except ConfigError as error:
        raise SubmitError(f"{error}; nothing was submitted") from error
    return loaded


def sbatch_parameters(spec: JobSpec) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (the ``#SBATCH`` lines and the setup before ``srun``)."""
    params: dict[str, Any] = {
        "job_name": spec.job_name, "nodes": spec.nodes, "ntasks_per_node": spec.ntasks_per_node,
        "cpus_per_task": spec.cpus, "time": spec.time_min, "signal_delay_s": spec.signal_delay_s,
        # No srun --kill-on-bad-exit: on a time-limit warning the other ranks exit (code 1) while rank 0
        # requeues the job, which must not be killed first. After a peer failure the requeue ends the step.
        "additional_parameters": {"requeue": True, **spec.sbatch_extra},
        "setup": [f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{spec.cpus}}}",
                  f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        # After srun, on the batch node: a step that failed because a node of the job died (srun kills
        # the surviving tasks before they can notice) requeues the job; see after_step().
        "teardown": ["xkd_step_status=$?",
                     f"{shlex.quote(sys.executable)} -m xkd.slurm after-step \"$xkd_step_status\" {spec.max_requeues}",
                     'exit "$xkd_step_status"'],
    }
    if spec.gpus_per_node:
        params["gpus_per_node"] = spec.gpus_per_node
    for name in ("partition", "account", "qos", "mem", "constraint"):
        if getattr(spec, name):
            params[name] = getattr(spec, name)
    return params


def submitit_command(folder: Path, python: str = sys.executable) -> str:
    return " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def render_sbatch(spec: JobSpec, folder: Path) -> str:
    """The sbatch script submitit writes for ``spec`` (identical text; %j is the job id)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=submitit_command(folder), folder=folder, **sbatch_parameters(spec))


def describe_task(spec: JobSpec, argv: list[str]) -> str:
    """The per-task command of a dry run."""
    return "\n".join([
        f"# per task: srun starts {spec.nodes} node(s) x {spec.ntasks_per_node} task(s) = world size "
        f"{spec.world_size}; each task runs xkd.slurm.PretrainTask (unpickled by submitit), i.e.",
        "#   RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS "
        "MASTER_ADDR=<first node of $SLURM_JOB_NODELIST> MASTER_PORT=<from job id and restart count>",
        f"#   {shlex.quote(sys.executable)} launch/pretrain.py {shlex.join(argv)}",
        "# (in-process; backend "
        + ("NCCL, one GPU per task: cuda:$SLURM_LOCALID)" if spec.gpus_per_node else "gloo on CPU)"),
    ])


def _sinfo_partitions() -> tuple[dict[str, dict[str, Any]], str | None]:
    """Partitions of the cluster (nodes and generic resources) and the default one, from ``sinfo``."""
    if shutil.which("sinfo") is None:
        raise SubmitError("sinfo not found: this machine is not a SLURM login node (start the test cluster with "
                          "scripts/slurm_local_cluster.sh start, run here with --executor local, or use --dry-run)")
    result = subprocess.run(["sinfo", "-h", "-o", "%P|%D|%G"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SubmitError(f"sinfo failed (exit {result.returncode}): {result.stderr.strip()}; is slurmctld reachable?")
    partitions: dict[str, dict[str, Any]] = {}
    default = None
    for line in result.stdout.splitlines():
        name, nodes, gres = line.split("|")
        if name.endswith("*"):  # sinfo marks the default partition
            name = default = name[:-1]
        entry = partitions.setdefault(name, {"nodes": 0, "gres": set()})
        entry["nodes"] += int(nodes)
        entry["gres"].add(gres)
    return partitions, default


def gres_gpus(gres: str) -> int:
    """GPUs per node in an sinfo GRES string: ``gpu:8``, ``gpu:v100:8(S:0-1)``, ``(null)`` -> 0."""
    count = 0
    for part in gres.split(","):
        fields = part.split("(")[0].split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            count += int(fields[-1])
    return count


def detected_gpus_per_node(partition: str | None = None) -> int | None:
    """GPUs per node of ``partition`` (default: the cluster's default) from sinfo; None without a
    reachable cluster. A partition of mixed nodes counts its smallest GPU node."""
    try:
        partitions, default = _sinfo_partitions()
    except (SubmitError, OSError, subprocess.SubprocessError):
        return None
    entry = partitions.get(partition or default or "")
    if entry is None:
        return None
    return min(gres_gpus(gres) for gres in entry["gres"])


def check_cluster(spec: JobSpec) -> None:
    """The partition exists and can hold the job (nodes, GPUs): clear messages instead of sbatch's."""
    partitions, default = _sinfo_partitions()
    if not partitions:
        raise SubmitError("sinfo lists no partitions on this cluster")
    if spec.partition is not None and spec.partition not in partitions:
        raise SubmitError(f"--partition {spec.partition!r} does not exist on this cluster (sinfo lists: "
                          f"{', '.join(sorted(partitions))}); nothing was submitted")
    name = spec.partition or default
    if name is None:
        return  # no default partition: sbatch will ask for one
    entry = partitions[name]
    if spec.nodes > entry["nodes"]:
        raise SubmitError(f"--nodes {spec.nodes}: partition {name!r} has only {entry['nodes']} node(s); "
                          "nothing was submitted")
    if spec.gpus_per_node and not any("gpu" in gres for gres in entry["gres"]):
        raise SubmitError(f"--gpus-per-node {spec.gpus_per_node}: partition {name!r} has no GPUs "
                          f"(sinfo gres: {', '.join(sorted(entry['gres']))}); for a CPU job use --gpus-per-node 0 "
                          "--tasks-per-node N; nothing was submitted")


def submit(spec: JobSpec, argv: list[str], folder: Path, executor: str = "slurm"):
    """Submit ``PretrainTask(argv)``; returns the submitit job."""
    task = PretrainTask(argv, max_requeues=spec.max_requeues)
    if executor == "local":
        if spec.nodes != 1:
            raise SubmitError(f"--executor local runs on this machine only: --nodes must be 1, not {spec.nodes}")
        local = submitit.LocalExecutor(folder)
        local.update_parameters(tasks_per_node=spec.ntasks_per_node, gpus_per_node=spec.gpus_per_node,
                                timeout_min=spec.time_min, signal_delay_s=spec.signal_delay_s,
                                setup=sbatch_parameters(spec)["setup"])
        return local.submit(task)
    if executor != "slurm":
        raise SubmitError(f"--executor {executor!r}: expected slurm or local")
    try:
        slurm = submitit.SlurmExecutor(folder, max_num_timeout=spec.max_requeues)
    except RuntimeError as error:
        raise SubmitError(f"{error} (use --executor local to run on this machine, or --dry-run)") from error
    slurm.update_parameters(**sbatch_parameters(spec))
    try:
        return slurm.submit(task)
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as error:
        raise SubmitError(f"sbatch refused the job: {error}") from error


# ----------------------------------------------------------------------------- after submission


def tracking_uri(config, output: Path) -> str:
    from xkd.tracking import default_tracking_uri

    return config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(output)


def mlflow_link(uri: str, run_id: str) -> str:
    """Where to look at the run: a URL for a tracking server, the ``mlflow ui`` command for a local store."""
    experiment = "0"
    try:
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(uri).get_run(run_id).info.experiment_id
    except Exception:  # the link is a convenience; never fail a submission over it
        pass
    fragment = f"#/experiments/{experiment}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{fragment}"
    return f"run {run_id} in {uri} (open with: mlflow ui --backend-store-uri {uri}, then {fragment})"


def slurm_state(job_id: str) -> str:
    """PENDING / RUNNING / ... while the job is queued (squeue), then its final state (sacct)."""
    queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    state = queued.stdout.strip().splitlines()
    if queued.returncode == 0 and state:
        return state[0]
    done = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    lines = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else "UNKNOWN"


def job_state(job) -> str:
    if isinstance(job, submitit.LocalJob):
        return job.state
    return slurm_state(job.job_id)


def job_finished(job, state: str) -> bool:
    if isinstance(job, submitit.LocalJob):
        return state != "RUNNING"
    return state.split()[0] in FINAL_STATES


class LogTail:
    """Prints what was appended to a file since the last call."""

    def __init__(self, path: Path, out: TextIO, prefix: str = ""):
        self.path, self.out, self.prefix, self.position = path, out, prefix, 0

    def poll(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.position)
                data = handle.read()
        except FileNotFoundError:
            return
        if data:
            self.position += len(data)
            text = data.decode(errors="replace")
            if self.prefix:
                text = "".join(self.prefix + line for line in text.splitlines(keepends=True))
            self.out.write(text)
            self.out.flush()


def follow(job, run_dir: Path, uri: str, out: TextIO = sys.stdout, poll_s: float = 2.0) -> str:
    """Tail rank 0's stdout and stderr until the job ends (requeues included); returns the final state."""
    tails = [LogTail(job.paths.stdout, out), LogTail(job.paths.stderr, out, prefix="[stderr] ")]
    run_id_file, announced = run_dir / "mlflow_run_id", False
    last_state = ""
    while True:
        state = job_state(job)
        for tail in tails:
            tail.poll()
        if state != last_state:
            out.write(f"[slurm_submit] job {job.job_id}: {state}\n")
            out.flush()
            last_state = state
        if not announced and run_id_file.is_file() and run_id_file.read_text().strip():
            out.write(f"[slurm_submit] MLflow: {mlflow_link(uri, run_id_file.read_text().strip())}\n")
            announced = True
        if job_finished(job, state):
            time.sleep(poll_s)  # the last lines reach the log files after the state changes
            for tail in tails:
                tail.poll()
            return state
        time.sleep(poll_s)


if __name__ == "__main__":  # the batch script's teardown: python -m xkd.slurm after-step STATUS MAX_REQUEUES
    if len(sys.argv) == 4 and sys.argv[1] == "after-step":
        sys.exit(after_step(int(sys.argv[2]), int(sys.argv[3])))
    sys.exit("usage: python -m xkd.slurm after-step STATUS MAX_REQUEUES")
