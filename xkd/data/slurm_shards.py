"""``make_shards.py --slurm``: the same build as one machine, with the transcoding spread over a SLURM job array.

Transcoding is almost all of the cost (about a core-second per clip); packing the results into
tar shards is file copying. So the build is split where that is true and nowhere else:

1. **Submit** (login node): the output folder is checked, and its journal started, exactly as for a
   local run; the inputs and arguments go to ``<output>/.make_shards.slurm`` (see
   ``xkd/data/prepared_clips.py``); then a job array of ``nodes x tasks-per-node`` transcoding
   tasks and one packing job (``--dependency=afterany`` on the array) are submitted through submitit.
2. **Transcode** (array task ``t``): the inputs in packing order are cut into equal contiguous
   ranges, one per task; task ``t`` transcodes every clip of its range with ``--workers`` processes
   (the task's CPUs) and records each result. A rerun of the task (requeue after preemption,
   timeout or node failure) skips the clips already recorded.
3. **Pack** (one task, after the array ended however it ended): :func:`build_shards` with the same
   job as a local run. It takes each clip's result from the work area in input order, transcodes
   on the spot any clip no task finished (a task killed or lost), packs, journals and writes the
   manifest, then deletes the work area.

Because one process packs in input order with the local code, the shards, index files,
``skipped.jsonl``, journal and manifest are byte-identical to a one-machine run with the same
arguments, whichever task died. Submitting the same command again continues: finished shards
are kept, recorded clips are not transcoded again, and only tasks with work left are submitted.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import submitit
from submitit.helpers import Checkpointable

from xkd.data import format as fmt
from xkd.data import skip_reasons as sr
from xkd.data.build_shards import (ShardJob, _init_worker, _make_output_folder, _prepare_output, build_shards,
                                   first_positions, job_fingerprint, ordered_inputs)
from xkd.data.inputs import label_map
from xkd.data.journal import Journal
from xkd.data.prepare_clip import ClipPolicy, prepare_clip
from xkd.data.prepared_clips import PreparedClips
from xkd.data.transcode import TranscodeSettings
from xkd.slurm import FINAL_STATES, ROOT, SubmitError, submitit_command

PROGRESS_EVERY_S = 10.0  # a task's log line and progress file


@dataclass
class ArraySpec:
    """Resources of the transcoding array (one task = ``cpus_per_task`` worker processes on one node)."""

    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1  # make_shards --workers
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 24 * 60
    mem: str | None = None
    constraint: str | None = None
    job_name: str = "make_shards"
    sbatch_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    def check(self) -> None:
        for name in ("nodes", "tasks_per_node", "cpus_per_task"):
            if getattr(self, name) < 1:
                raise SubmitError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected at least 1")


def task_ranges(num_inputs: int, tasks: int) -> list[tuple[int, int]]:
    """``tasks`` contiguous ``[start, end)`` ranges over the packing order, sizes differing by at most one."""
    return [(num_inputs * t // tasks, num_inputs * (t + 1) // tasks) for t in range(tasks)]


def job_args(job: ShardJob) -> dict[str, Any]:
    """What the tasks need to rebuild ``job`` (its inputs go to inputs.jsonl)."""
    return {"output": str(job.output), "input_kind": job.input_kind, "input_root": job.input_root,
            "list_file": job.list_file, "filename_pattern": job.filename_pattern, "split": job.split,
            "shard_size": job.shard_size, "shard_bytes": job.shard_bytes, "seed": job.seed,
            "settings": asdict(job.settings), "policy": asdict(job.policy), "workers": job.workers}


def job_from_plan(store: PreparedClips, plan: dict) -> ShardJob:
    args = dict(plan["job"])
    settings, policy = TranscodeSettings(**args.pop("settings")), ClipPolicy(**args.pop("policy"))
    return ShardJob(output=Path(args.pop("output")), inputs=store.read_inputs(), settings=settings, policy=policy,
                    progress=False, **args)


def clips_to_transcode(store: PreparedClips, ordered, first: dict[str, int], start: int, end: int) -> list[int]:
    """Positions of ``[start, end)`` that need ffmpeg: first copies of existing files not yet prepared
    (duplicates and missing files are skip records the packer writes itself)."""
    return [p for p in range(start, end)
            if ordered[p].path is not None and first[ordered[p].source] == p and store.load(p, ordered[p]) is None]


# ----------------------------------------------------------------------------- on the nodes


def log(message: str) -> None:
    print(f"[make_shards {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class TranscodeTask(Checkpointable):
    """Array task ``t``: transcode the clips of range ``t`` into the work area (see the module docstring).
    Checkpointable: on preemption or time limit submitit requeues it and the rerun skips finished clips."""

    def __init__(self, output: str):
        self.output = output

    def __call__(self, task: int) -> dict[str, int]:
        store = PreparedClips(Path(self.output))
        plan = store.read_plan()
        job = job_from_plan(store, plan)
        ordered = ordered_inputs(job.inputs, job.seed)
        labels = label_map(ordered)
        start, end = plan["ranges"][task]
        start = max(start, plan.get("packed_until", 0))  # clips already in finished shards
        end = max(start, end)
        todo = clips_to_transcode(store, ordered, first_positions(ordered), start, end)
        total = end - start
        counts = {"task": task, "range": [start, end], "inputs": total, "to_transcode": len(todo), "done": 0,
                  "skipped": 0, "already_prepared": total - len(todo)}
        log(f"task {task}: inputs {start}..{end - 1} ({total}), {len(todo)} to transcode with {job.workers} "
            f"worker(s) on {os.uname().nodename}")
        store.write_progress(task, {**counts, "state": "running"})
        last = time.monotonic()
        with ProcessPoolExecutor(max_workers=job.workers, initializer=_init_worker,
                                 initargs=(os.getpid(),)) as pool:
            running: dict[Future, int] = {}
            pending = iter(todo)
            while True:
                while len(running) < job.workers * 2:
                    position = next(pending, None)
                    if position is None:
                        break
                    store.discard(position)  # what a killed run left half-written
                    running[pool.submit(prepare_clip, ordered[position], labels, job.settings, job.policy,
                                        store.clip_dir(position))] = position
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    store.save(running.pop(future), result)
                    counts["done"] += 1
                    counts["skipped"] += isinstance(result, sr.SkipRecord)
                if time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    store.write_progress(task, {**counts, "state": "running"})
                    log(f"task {task}: {counts['done']}/{len(todo)} clips transcoded ({counts['skipped']} skipped)")
        store.write_progress(task, {**counts, "state": "done"})
        log(f"task {task}: done, {counts['done']} clips transcoded ({counts['skipped']} skipped)")
        return counts


class PackTask(Checkpointable):
    """The packing job: ``build_shards`` on the planned job (finished clips from the work area, the rest
    transcoded here), byte-identical to a local run. Checkpointable: a requeue continues from the journal."""

    def __init__(self, output: str):
        self.output = output

    def __call__(self) -> dict[str, Any]:
        store = PreparedClips(Path(self.output))
        if not store.exists() and (Path(self.output) / fmt.MANIFEST_NAME).is_file():
            log(f"{self.output}: already complete")  # a requeued copy of a finished packing job
            return {}
        job = job_from_plan(store, store.read_plan())
        ordered = ordered_inputs(job.inputs, job.seed)
        progress = store.read_progress()
        done = sum(p.get("done", 0) + p.get("already_prepared", 0) for p in progress.values())
        log(f"packing {len(ordered)} inputs into {job.output} ({done} prepared by the array; clips no task "
            f"finished are transcoded here with {job.workers} worker(s))")
        started = time.perf_counter()
        summary = build_shards(job)
        log(f"done: {summary.num_samples} samples in {summary.num_shards} shards, {summary.num_skipped} skipped "
            f"of {summary.num_inputs} inputs, packed in {time.perf_counter() - started:.2f} s")
        return {"num_samples": summary.num_samples, "num_shards": summary.num_shards,
                "num_skipped": summary.num_skipped}


# ----------------------------------------------------------------------------- on the login node


def executor_parameters(spec: ArraySpec, cpus: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "job_name": spec.job_name, "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": cpus, "time": spec.time_min,
        "additional_parameters": {"requeue": True, **spec.sbatch_extra},
        "setup": ["export OMP_NUM_THREADS=1",  # the workers run single-threaded ffmpeg
                  f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
    }
    for name in ("partition", "account", "qos", "mem", "constraint"):
        if getattr(spec, name):
            params[name] = getattr(spec, name)
    return params


def render_scripts(spec: ArraySpec, folder: Path, array_tasks: list[int]) -> str:
    """The two sbatch scripts submitit writes (array, then packing job), for --dry-run."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = submitit_command(folder)
    array = _make_sbatch_string(command=command, folder=folder, map_count=len(array_tasks),
                                array_parallelism=len(array_tasks), **executor_parameters(spec, spec.cpus_per_task))
    pack = _make_sbatch_string(command=command, folder=folder, dependency="afterany:<array job id>",
                               **executor_parameters(spec, spec.cpus_per_task))
    return (f"# 1. transcoding array: {len(array_tasks)} task(s) (array index -> task: "
            f"{', '.join(f'{i}->{t}' for i, t in enumerate(array_tasks))})\n{array}\n"
            f"# 2. packing job, after the array ended\n{pack}")


def active_jobs(plan: dict) -> list[str]:
    """The plan's SLURM jobs still queued or running (squeue), as 'id STATE'."""
    ids = [job for job in (plan.get("array_job"), plan.get("pack_job")) if job]
    if not ids or shutil.which("squeue") is None:
        return []
    out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def refuse_while_building(output: Path) -> None:
    """A local run must not pack into a folder that SLURM jobs of ``--slurm`` are still building."""
    store = PreparedClips(output)
    try:
        jobs = active_jobs(store.read_plan()) if store.exists() else []
    except ValueError:
        return
    if jobs:
        raise SubmitError(f"{output} is being built by SLURM jobs still queued or running ({'; '.join(jobs)}): "
                          "watch them with the same command plus --slurm --follow, or scancel them first")


def submit(job: ShardJob, spec: ArraySpec, dry_run: bool = False, follow_up: bool = False,
           out: TextIO = sys.stdout) -> int:
    """Plan and submit (or print, or attach to) the SLURM build of ``job``; returns the exit status."""
    spec.check()
    spec.cpus_per_task = job.workers
    ordered = ordered_inputs(job.inputs, job.seed)
    ranges = task_ranges(len(ordered), spec.tasks)
    folder = PreparedClips(job.output).root / "slurm"
    if dry_run:
        print(f"# make_shards --slurm --dry-run: {len(ordered)} inputs -> {job.output}, {spec.tasks} transcoding "
              f"task(s) of {spec.cpus_per_task} CPU(s); nothing submitted, nothing written", file=out)
        for t, (start, end) in enumerate(ranges):
            print(f"#   task {t}: inputs {start}..{end - 1} ({end - start}) in packing order", file=out)
        print(render_scripts(spec, folder, list(range(spec.tasks))), file=out)
        return 0

    _make_output_folder(job.output)
    fingerprint = job_fingerprint(job, ordered)
    store = PreparedClips(job.output)
    plan = store.read_plan() if store.exists() else None
    if plan is not None and (jobs := active_jobs(plan)):
        if follow_up:
            return follow(store, plan, out)
        raise SubmitError(f"{job.output} is being built by SLURM jobs still queued or running ({'; '.join(jobs)}); "
                          "rerun with --follow to watch them, or scancel them first")
    state = _prepare_output(job, Journal(job.output), fingerprint)
    if state is None:
        print(f"[make_shards] {job.output}: already complete (manifest.json); nothing submitted", file=out)
        return 0
    if plan is not None and plan["fingerprint"] != fingerprint:
        raise SubmitError(f"{store.root}: planned for a build with other arguments than the journal's; delete that "
                          "folder and submit again")
    store.write_inputs(job.inputs)
    plan = {"fingerprint": fingerprint, "job": job_args(job), "ranges": ranges, "num_inputs": len(ordered),
            "tasks": spec.tasks, "packed_until": state.next_input, "array_job": None, "pack_job": None}
    store.write_plan(plan)
    first = first_positions(ordered)
    needed = [t for t, (start, end) in enumerate(ranges)
              if clips_to_transcode(store, ordered, first, max(start, state.next_input), end)]

    folder.mkdir(parents=True, exist_ok=True)
    try:
        executor = submitit.SlurmExecutor(folder)
    except RuntimeError as error:
        raise SubmitError(f"{error} (make_shards --slurm needs sbatch; run without --slurm on one machine)") from error
    array_id = None
    if needed:
        executor.update_parameters(**executor_parameters(spec, spec.cpus_per_task), array_parallelism=len(needed))
        try:
            array = executor.map_array(TranscodeTask(str(job.output)), needed)
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as error:
            raise SubmitError(f"sbatch refused the transcoding array: {error}") from error
        array_id = array[0].job_id.split("_")[0]
        plan["array_job"] = array_id
        store.write_plan(plan)
    executor = submitit.SlurmExecutor(folder)
    executor.update_parameters(**executor_parameters(spec, spec.cpus_per_task),
                               **({"dependency": f"afterany:{array_id}"} if array_id else {}))
    try:
        pack = executor.submit(PackTask(str(job.output)))
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as error:
        raise SubmitError(f"sbatch refused the packing job: {error}") from error
    plan["pack_job"] = pack.job_id
    store.write_plan(plan)
    print(f"[make_shards] submitted transcoding array {array_id or '(none: every clip is prepared)'} with "
          f"{len(needed)} of {spec.tasks} task(s) {needed} and packing job {pack.job_id} (after the array)", file=out)
    print(f"[make_shards] task logs: {folder}/<job id>_<task>_log.err; work area: {store.root}", file=out)
    out.flush()
    return follow(store, plan, out) if follow_up else 0


def _state(job_id: str | None) -> str:
    from xkd.slurm import slurm_state

    return slurm_state(job_id).split()[0] if job_id else "NONE"


def shards_journaled(output: Path) -> int:
    path = output / fmt.JOURNAL_NAME
    return path.read_bytes().count(b'"type":"shard"') if path.is_file() else 0


def follow(store: PreparedClips, plan: dict, out: TextIO = sys.stdout, poll_s: float = 2.0) -> int:
    """Overall progress until the packing job ends: clips transcoded / skipped, packing state."""
    output = store.root.parent
    total = plan["num_inputs"]
    last_line, done, skipped = "", 0, 0
    while True:
        pack_state = _state(plan.get("pack_job"))
        progress = store.read_progress()  # gone once the packer finished (it deletes the work area)
        if progress:
            done = sum(p.get("done", 0) + p.get("already_prepared", 0) for p in progress.values())
            skipped = sum(p.get("skipped", 0) for p in progress.values())
        running = sum(p.get("state") == "running" for p in progress.values())
        line = (f"[make_shards] transcoded {done}/{total} clips ({skipped} skipped), {running} task(s) running; "
                f"packing job {plan.get('pack_job')}: {pack_state}, {shards_journaled(output)} shard(s) written")
        if line != last_line:
            print(line, file=out, flush=True)
            last_line = line
        if pack_state in FINAL_STATES:
            break
        time.sleep(poll_s)
    manifest = output / fmt.MANIFEST_NAME
    if pack_state == "COMPLETED" and manifest.is_file():
        data = json.loads(manifest.read_text())
        print(f"[make_shards] done: {data['num_samples']} samples in {data['num_shards']} shards, "
              f"{data['num_skipped']} skipped of {data['num_inputs']} inputs", file=out)
        return 0
    print(f"[make_shards] packing job {plan.get('pack_job')} ended {pack_state}; see its log in {store.root / 'slurm'}; "
          "submitting the same command again continues", file=out)
    return 1
