#!/usr/bin/env python
"""Submit XKD pretraining to SLURM through submitit: one task per GPU, ranks from SLURM.

    python launch/slurm_submit.py --nodes 4 --gpus-per-node 8 --partition learnfair --constraint volta32gb \\
        --time 72:00:00 --config configs/xkd_ms_k400.yaml --ds_config ds_configs/zero2.json \\
        --data /data/k400/shards --output runs/k400_ms train.precision=fp16
    python launch/slurm_submit.py ... --dry-run          # print the sbatch script and the per-task command
    python launch/slurm_submit.py --gpus-per-node 0 --tasks-per-node 2 --output runs/tiny --follow   # CPU, gloo
    python launch/slurm_submit.py --executor local --gpus-per-node 0 --tasks-per-node 2 ...           # no SLURM

Each task runs launch/pretrain.py's code in-process (xkd.engine.run.pretrain) with rank =
SLURM_PROCID, local rank = SLURM_LOCALID, world size = SLURM_NTASKS and the first node of the
allocation as rendezvous host (submitit's TorchDistributedEnvironment); NCCL on GPUs, gloo on
CPUs. The deepspeed launcher (ssh/pdsh) is not used. Overrides: any key.sub=value after the options.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from xkd.cli_help import HelpFormatter
from xkd.engine.ds_config import per_rank_batch
from xkd.engine.run import pretraining_options
from xkd.slurm import (
    JobSpec,
    SubmitError,
    check_cluster,
    check_inputs,
    check_spec,
    check_start_before_submit,
    describe_task,
    detected_gpus_per_node,
    follow,
    mlflow_link,
    parse_time,
    render_sbatch,
    submit,
    task_argv,
    tracking_uri,
)

EPILOG = """\
requeue: SLURM sends SIGUSR2 --signal-delay-s seconds before the time limit; every task saves a
  checkpoint at the next step and rank 0 requeues the job, which resumes from that checkpoint with
  the same MLflow run (<output>/mlflow_run_id). Preemption / `scontrol requeue` send SIGTERM: the
  tasks checkpoint and exit, and the requeued job resumes the same way. Submitting the same
  command again (same --output) also resumes.
V100 (volta32gb) has no bf16: pass train.precision=fp16 (DeepSpeed fp16 with dynamic loss
  scaling), e.g. --constraint volta32gb train.precision=fp16.
--resume applies to the first start; a requeued job always resumes from its latest complete checkpoint.
logs: <output>/slurm/<job id>_<task>_log.out / _log.err (rank 0 is task 0); --follow tails rank 0.
  submitit's files go to <output>/slurm as well.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG, parents=[pretraining_options()],
                                     formatter_class=HelpFormatter)
    job = parser.add_argument_group("job")
    job.add_argument("--nodes", type=int, default=1, help="nodes of the allocation (default 1)")
    job.add_argument("--gpus-per-node", default="auto",
                     help="one task per GPU; 0 for a CPU job (gloo); auto (default): the partition's GPUs per node "
                          "from sinfo (8 where no cluster answers, e.g. a --dry-run away from the cluster)")
    job.add_argument("--tasks-per-node", type=int, default=None,
                     help="CPU jobs: ranks per node (default: --gpus-per-node, or 1 without GPUs)")
    job.add_argument("--cpus-per-task", type=int, default=None, help="default: 10 with GPUs, 1 without")
    job.add_argument("--partition", default=None, help="default: the cluster's default partition")
    job.add_argument("--account", default=None, help="sbatch --account (default: none given)")
    job.add_argument("--qos", default=None, help="sbatch --qos (default: none given)")
    job.add_argument("--time", default="72:00:00", help="time limit: minutes or [D-]HH:MM[:SS] (default 72:00:00)")
    job.add_argument("--mem", default=None, help="memory per node, e.g. 480G (default: the partition's default)")
    job.add_argument("--constraint", default=None, help="node features, e.g. volta32gb")
    job.add_argument("--job-name", default="xkd", help="SLURM job name (default xkd)")
    job.add_argument("--signal-delay-s", type=int, default=120,
                     help="seconds before the time limit at which the tasks checkpoint and requeue (default 120)")
    job.add_argument("--max-requeues", type=int, default=10, help="requeues on time limit before giving up (default 10)")
    job.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                     help="any other sbatch option, e.g. --sbatch exclusive=true (repeatable)")
    job.add_argument("--executor", choices=("slurm", "local"), default="slurm",
                     help="local: submitit's LocalExecutor runs the tasks on this machine (implies --follow)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script and per-task command; "
                        "submit nothing")
    parser.add_argument("--follow", action="store_true", help="tail rank 0's logs until the job ends")
    return parser.parse_args(argv)


def _extra(items: list[str]) -> dict[str, str]:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SubmitError(f"--sbatch {item!r}: expected KEY=VALUE, e.g. exclusive=true")
        extra[key.replace("-", "_")] = True if value.lower() == "true" else value
    return extra


def gpus_per_node(args: argparse.Namespace) -> int:
    """--gpus-per-node as a number; ``auto`` asks the cluster (a CPU cluster gives 0: gloo tasks)."""
    if args.gpus_per_node != "auto":
        try:
            return int(args.gpus_per_node)
        except ValueError:
            raise SubmitError(f"--gpus-per-node {args.gpus_per_node!r}: expected auto or a number") from None
    detected = None if args.executor == "local" else detected_gpus_per_node(args.partition)
    if detected is None:
        detected = 0 if args.executor == "local" else 8
        print(f"[slurm_submit] --gpus-per-node auto: no cluster answered sinfo; assuming {detected}")
    else:
        print(f"[slurm_submit] --gpus-per-node auto: {detected} per node (sinfo)")
    return detected


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = JobSpec(nodes=args.nodes, gpus_per_node=gpus_per_node(args), tasks_per_node=args.tasks_per_node,
                       cpus_per_task=args.cpus_per_task, partition=args.partition, account=args.account,
                       qos=args.qos, time_min=parse_time(args.time), mem=args.mem, constraint=args.constraint,
                       job_name=args.job_name, signal_delay_s=args.signal_delay_s, max_requeues=args.max_requeues,
                       sbatch_extra=_extra(args.sbatch))
        check_spec(spec)
        config = check_inputs(args.config, args.ds_config, args.overrides, spec.world_size)
        output = Path(args.output or ROOT / "runs" / config.name).resolve()
        data = args.data and (str(Path(args.data).resolve()) if Path(args.data).exists() else args.data)
        try:
            check_start_before_submit(config, data, output, spec.world_size, args.allow_change, args.resume)
        except SubmitError as error:
            if not args.dry_run:
                raise
            print(f"# warning: a real submission would be refused: {error}")  # a dry run still shows the script
        argv_task = task_argv(str(Path(args.config).resolve()), str(Path(args.ds_config).resolve()), str(output),
                              data, args.max_steps, args.overrides, args.allow_change, args.resume)
        folder = output / "slurm"
        if args.dry_run:
            print(f"# sbatch script ({folder}/%j_submission.sh once submitted; nothing submitted: --dry-run)")
            print(render_sbatch(spec, folder))
            print(describe_task(spec, argv_task))
            micro, accumulation = per_rank_batch(config, spec.world_size)
            print(f"# batch: global {config.train.global_batch_size} = {spec.world_size} ranks x micro-batch {micro} "
                  f"x {accumulation} accumulation step(s)"
                  + (" (derived from the world size)" if not config.train.micro_batch_size else ""))
            return 0
        if args.executor == "slurm":
            check_cluster(spec)
        output.mkdir(parents=True, exist_ok=True)
        job = submit(spec, argv_task, folder, args.executor)
    except SubmitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    uri = tracking_uri(config, output)
    print(f"[slurm_submit] submitted job {job.job_id} ({args.executor}): {spec.nodes} node(s) x "
          f"{spec.ntasks_per_node} task(s), world size {spec.world_size}")
    print(f"[slurm_submit] rank 0 log: {job.paths.stdout}")
    print(f"[slurm_submit] rank 0 err: {job.paths.stderr}")
    print(f"[slurm_submit] all tasks: {folder}/{job.job_id}_<task>_log.out")
    print(f"[slurm_submit] run directory: {output}")
    run_id_file = output / "mlflow_run_id"
    if run_id_file.is_file() and run_id_file.read_text().strip():
        print(f"[slurm_submit] MLflow (continued): {mlflow_link(uri, run_id_file.read_text().strip())}")
    else:
        print(f"[slurm_submit] MLflow: tracking {uri}; the run id appears in {run_id_file} when rank 0 starts")
    sys.stdout.flush()
    if not (args.follow or args.executor == "local"):
        return 0
    state = follow(job, output, uri)
    ok = state == "COMPLETED" or (args.executor == "local" and state == "FINISHED" and job.exception() is None)
    print(f"[slurm_submit] job {job.job_id} ended: {state}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
