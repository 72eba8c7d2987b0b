"""The XKD training loop in a DeepSpeed ZeRO engine (paper Algorithm 1), top to bottom.

Per optimizer step: schedules at the global step -> the loader's batch finished on the device
(video colour, blur, flip, normalisation; audio log-mels and crops; xkd/data/batch_finish.py) -> teachers encode
the views (no grad, outside the engine) -> students' loss in the engine -> backward / ZeRO
step -> EMA update of the teachers from the (gathered) student weights -> logging,
checkpoints, signals.
"""
from __future__ import annotations

import json
import logging
import resource
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from xkd.atomic_files import atomic_write_bytes
from xkd.config import XKDConfig
from xkd.data.batch_finish import BatchFinisher
from xkd.distributed import DistributedEnv, mean_over_ranks
from xkd.ema import teacher_student_pairs
from xkd.engine import checkpoint, checkpoint_safety
from xkd.engine.metrics_sink import MetricsSink
from xkd.engine.ema_gather import ema_update_gathered
from xkd.engine.params import student_optimizer
from xkd.engine.preflight import ResumePlan
from xkd.engine.schedule_state import schedule_at
from xkd.engine.stop import StopRequest
from xkd.models import XKD, teacher_views
from xkd.tracking import resolved_config, training_tracker

log = logging.getLogger("xkd.train")


@dataclass
class RunOptions:
    output: Path
    ds_config: dict[str, Any]
    ds_config_path: str
    resume: ResumePlan = field(default_factory=lambda: ResumePlan(None))  # checked by xkd.engine.preflight
    data_fingerprint: dict[str, Any] = field(default_factory=dict)  # stored with every checkpoint
    max_steps: int = 0  # 0: the whole schedule (optim.epochs)
    extra_params: dict[str, Any] = field(default_factory=dict)
    stop: StopRequest | None = None  # signal handling installed by the caller (SLURM task); default SIGTERM/USR1


def _agree(loss: torch.Tensor, stop: bool, device: torch.device) -> tuple[bool, bool]:
    """All ranks take the same decision: skip the step if any rank saw a non-finite loss,
    stop if any rank was signalled. One tiny all-reduce per micro-step; the flags are made on
    the device (no host copy), so the only host sync is reading the agreed result."""
    nonfinite = (~torch.isfinite(loss.detach().to(device))).float().reshape(1)
    flags = torch.cat([nonfinite, nonfinite.new_full((1,), float(stop))])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    nonfinite_any, stop_any = flags.tolist()
    return bool(nonfinite_any), bool(stop_any)


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass
class StepOutcome:
    """What one micro-step of :meth:`Trainer.train_step` produced."""

    losses: dict[str, torch.Tensor]  # the loss and its terms / monitors, this rank's values
    targets: Any  # the teachers' outputs (for the refine-attention picture)
    stop: bool  # some rank was signalled: checkpoint and exit after this step
    optimizer_stepped: bool  # the accumulation boundary: the optimizer and the teachers moved


class Trainer:
    def __init__(self, config: XKDConfig, env: DistributedEnv, device: torch.device, loader_factory, options: RunOptions):
        import deepspeed

        self.config, self.env, self.device, self.options = config, env, device, options
        self.finish = BatchFinisher(config.views).to(device)  # the loaders' batches -> the model's inputs
        self.output = options.output
        self.checkpoints = self.output / "checkpoints"
        precision = config.train.precision
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        from xkd.devices import require_precision

        require_precision(precision, device)  # bf16 below compute 8.0: refused, naming train.precision=fp16

        torch.manual_seed(config.train.seed)  # identical initial weights on every rank
        self.model = XKD(config)
        from xkd.models.encoder import set_activation_checkpointing

        set_activation_checkpointing(self.model.student, config.model.activation_checkpointing)
        self.teacher = self.model.teacher.to(device)
        optimizer = student_optimizer(self.model.student, config.optim)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=self.model.student, optimizer=optimizer,
                                                                 config=options.ds_config)
        self.zero_stage = self.engine.zero_optimization_stage()
        self.ema_pairs = teacher_student_pairs(self.teacher, self.engine.module)

        self.accumulation = options.ds_config["gradient_accumulation_steps"]
        self.start_state = self._resume()
        self.loader = loader_factory(self.start_state.get("data", {"epoch": 0, "position": 0}))
        self.steps_per_epoch = config.data.steps_per_epoch or max(1, self.loader.batches_per_epoch // self.accumulation)
        self.total_steps = config.optim.epochs * self.steps_per_epoch
        self.max_steps = min(options.max_steps or self.total_steps, self.total_steps)
        if options.max_steps > self.total_steps and env.is_main:
            log.warning("--max-steps %d is beyond the schedule: optim.epochs %d x %d steps per epoch = %d steps; "
                        "stopping at %d (lengthen the schedule with optim.epochs=N, which also stretches the "
                        "lr / EMA / temperature schedules)", options.max_steps, config.optim.epochs,
                        self.steps_per_epoch, self.total_steps, self.total_steps)
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = self.start_state.get("nonfinite_total", 0)
        # Counted, not derived from the step: a deliberate batch-size change on resume keeps it right.
        self.samples_seen = self.start_state.get("samples_seen",
                                                 self.start_state.get("step", 0) * config.train.global_batch_size)
        self.stop = options.stop or StopRequest()
        data = str(options.extra_params.get("data", config.data.shards))
        self.tracker = training_tracker(config, self.output, data, env.world_size, enabled=env.is_main)
        if not self.start_state:
            self.tracker.log_text(yaml.safe_dump(resolved_config(config, data), sort_keys=False),
                                  "config/resolved_config.yaml")
            self.tracker.log_text(json.dumps(options.ds_config, indent=2), "config/ds_config.json")
            self.tracker.log_params({"config": config.to_dict(), "deepspeed": options.ds_config,
                                     "run": {"world_size": env.world_size, "ds_config_path": options.ds_config_path,
                                             "steps_per_epoch": self.steps_per_epoch,
                                             "total_steps": self.total_steps, **options.extra_params}})
        if options.resume.changes:
            self._record_resume_changes(options.resume)
        self.probe = None
        if config.probe.every_steps:
            from xkd.engine.probe import Probe

            if "student" in config.probe.encoders and self.zero_stage == 3:
                raise ValueError("probe.encoders: the student cannot be probed under ZeRO-3 (its weights are "
                                 "partitioned); probe the teacher, or use ZeRO-1/2")
            self.probe = Probe(config, env.rank, env.world_size, device)
        if env.is_main:
            self._truncate_metrics(self.engine.global_steps)
        self.autocast = (torch.autocast("cuda", dtype=self.dtype) if device.type == "cuda" and self.dtype != torch.float32
                         else nullcontext())

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> dict[str, Any]:
        """Load the checkpoint the preflight chose and checked (world size, config, data, no planted code)."""
        tag_dir = self.options.resume.tag_dir
        if tag_dir is None:
            return {}
        directory, tag = tag_dir.parent, tag_dir.name
        trainer_state, rng = checkpoint.load_trainer_state(tag_dir, self.env.rank)
        with checkpoint_safety.weights_only_loads():
            self.engine.load_checkpoint(str(directory), tag=tag, load_optimizer_states=True,
                                        load_lr_scheduler_states=False)
        self.teacher.load_state_dict(trainer_state["teacher"])
        if rng is not None:
            checkpoint.restore_rng_state(rng)
        if self.env.is_main:
            log.info("resumed from %s at step %d", directory / tag, trainer_state["step"])
        return trainer_state

    def _record_resume_changes(self, resume: ResumePlan) -> None:
        """Deliberate changes accepted with --allow-change: in the log and in MLflow."""
        if not self.env.is_main:
            return
        log.warning("resuming %s with deliberate changes (--allow-change): %s", resume.tag_dir,
                    "; ".join(resume.changes))
        self.tracker.set_tags({f"resume_changes.step{resume.step:08d}": "; ".join(resume.changes)[:5000]})
        self.tracker.log_text("\n".join(resume.changes) + "\n", f"config/resume_changes_step{resume.step:08d}.txt")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics.jsonl rows after ``step``: a resumed run logs those steps again."""
        path = self.output / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_bytes().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] > step:
                    break
            except (json.JSONDecodeError, KeyError, TypeError):
                break  # a line cut by a crash: nothing after it is trusted
            kept.append(line if line.endswith(b"\n") else line + b"\n")
        if len(kept) != len(lines):
            atomic_write_bytes(path, b"".join(kept))
            log.info("metrics.jsonl: dropped %d rows after step %d (they are logged again)", len(lines) - len(kept),
                     step)

    def save(self, step: int) -> None:
        self.loader.sync_corrupt_samples()  # collective: rank 0's saved loader state then holds every rank's finds
        state = {"step": step, "teacher": self.teacher.state_dict(), "data": self.loader.state(),
                 "config": self.config.to_dict(), "world_size": self.env.world_size,
                 "nonfinite_total": self.nonfinite_total, "samples_seen": self.samples_seen,
                 "mlflow_run_id": self.tracker.run_id}
        meta = {"world_size": self.env.world_size, "config": self.config.to_dict(),
                "data": self.options.data_fingerprint, "samples_seen": self.samples_seen}
        tag = checkpoint.save(self.engine, self.checkpoints, step, state, meta, self.env.rank)
        if self.env.is_main:
            log.info("saved checkpoint %s", self.checkpoints / tag)

    # ------------------------------------------------------------------ pictures
    def visualize(self, step: int, batch: dict[str, torch.Tensor], targets) -> None:
        """Reconstruction grids and the teacher's refine heat-map of this batch as MLflow artifacts.

        Every rank runs the no-grad reconstruction forward (under ZeRO-3 it gathers parameters
        collectively); rank 0 draws and logs. The RNG is forked, so pictures never change training.
        """
        forked = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), torch.no_grad():
            recon = self.engine.module.reconstruct({k: v.to(self.dtype) for k, v in batch.items()})
        if not self.env.is_main:
            return
        from xkd import visualize

        try:
            video_view, _ = teacher_views(batch, self.config.model.teacher_view)
            grid = self.teacher.video_encoder.patch_embed.grid(video_view.shape)
            title = f"step {step}: "
            figures = {
                "video_reconstruction": visualize.video_reconstruction_figure(recon["video"], title=title),
                "audio_reconstruction": visualize.audio_reconstruction_figure(recon["audio"], title=title),
                "refine_attention": visualize.refine_attention_figure(video_view, targets.video_weights, grid,
                                                                      title=title),
            }
            for name, figure in figures.items():
                self.tracker.log_figure(figure, f"visuals/step{step:08d}/{name}.png")
        except Exception as error:  # pictures must never stop training
            log.warning("visualisation at step %d failed: %s: %s", step, type(error).__name__, error)

    # ------------------------------------------------------------------ probe
    def run_probe(self, step: int) -> dict[str, float]:
        """Probe scores of the current encoders at ``step`` (collective; see xkd/engine/probe.py)."""
        roles = {"teacher": self.teacher, "student": self.engine.module}
        encoders = {role: {"video": module.video_encoder, "audio": module.audio_encoder}
                    for role, module in roles.items()}
        return self.probe.run(encoders, step)

    # ------------------------------------------------------------------ one step
    def _batches(self):
        while True:
            yield from self.loader

    def train_step(self, batch: dict[str, torch.Tensor], schedule) -> StepOutcome | None:
        """One micro-step: teacher targets, the student's forward and losses, the ranks' vote, backward,
        the optimizer step at the accumulation boundary and then the EMA teachers (docs/method.md).
        None when every rank skipped it for a non-finite loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = schedule.learning_rate
        with torch.no_grad(), self.autocast:  # fp32 teachers, autocast on GPUs
            targets = self.teacher(*teacher_views(batch, self.config.model.teacher_view),
                                   schedule.video_teacher_temperature, schedule.audio_teacher_temperature)
        # The engine's module is in the training precision; so must its inputs be.
        losses = self.engine({k: v.to(self.dtype) for k, v in batch.items()}, targets)
        nonfinite, stop = _agree(losses["loss"], self.stop.requested, self.device)
        if nonfinite:
            self._skip_nonfinite()
            return None
        self.nonfinite_in_a_row = 0
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(losses["loss"])
        self.engine.step()
        if boundary:
            ema_update_gathered(self.ema_pairs, schedule.ema_momentum, self.zero_stage)
            self.samples_seen += self.config.train.global_batch_size
        return StepOutcome(losses, targets, stop, boundary)

    def _skip_nonfinite(self) -> None:
        step = self.engine.global_steps
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        if self.env.is_main:
            log.warning("non-finite loss at step %d: step skipped (%d in a row)", step, self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= self.config.train.max_consecutive_nonfinite:
            self.save(step)
            raise FloatingPointError(
                f"{self.nonfinite_in_a_row} non-finite losses in a row at step {step}; the last good state "
                f"is saved in {self.checkpoints / checkpoint.tag_for_step(step)}")

    def step_metrics(self, losses: dict[str, torch.Tensor], schedule) -> dict[str, float]:
        """The log-step record before timing: losses and monitors averaged over ranks, schedules and
        run state (collective: every rank calls it at the same steps)."""
        record = mean_over_ranks(losses)  # one all-reduce, at log steps only
        record.update({
            "lr": schedule.learning_rate, "ema_momentum": schedule.ema_momentum,
            "video_teacher_temperature": schedule.video_teacher_temperature,
            "audio_teacher_temperature": schedule.audio_teacher_temperature,
            "loss_scale": float(getattr(self.optimizer, "cur_scale", 1.0) or 1.0),
            "grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
            "samples_seen": self.samples_seen,
            "peak_memory_bytes": _peak_memory_bytes(self.device),
            "epoch": self.loader.state()["epoch"], "nonfinite_skipped": self.nonfinite_total,
            # Collective: shares every rank's finds, so rank 0's checkpointed loader state holds them all.
            "corrupt_samples": self.loader.sync_corrupt_samples(),
        })
        return record

    def train(self) -> int:
        """Run until max_steps (or a stop signal); returns the global step reached."""
        config, step = self.config, self.engine.global_steps
        sink = MetricsSink(self.output, self.tracker, self.env.is_main, step, self.max_steps,
                           config.train.global_batch_size)
        if self.probe is not None and step == 0 and self.probe.due(0):
            sink.write(0, self.run_probe(0))  # the random-init baseline, once (a resumed run does not repeat it)
        batches = self._batches()
        budget_warned = stopped = False
        while step < self.max_steps:
            schedule = schedule_at(step, config, self.steps_per_epoch)
            with sink.waiting_for_data():
                # uint8 video windows -> crops, colour, blur, flip, normalisation; audio windows -> log-mels and crops
                batch = self.finish(next(batches))
            outcome = self.train_step(batch, schedule)
            if outcome is None or not outcome.optimizer_stepped:
                continue
            step = self.engine.global_steps
            sink.step_done()

            probed = self.run_probe(step) if self.probe is not None and self.probe.due(step) else {}
            if probed and self.env.is_main and not budget_warned:
                warning = self.probe.over_budget(sink.seconds_since_start())
                if warning:
                    log.warning("%s", warning)
                    budget_warned = True
            if step % config.train.log_every_steps == 0 or step == self.max_steps or probed:
                sink.log(step, {**self.step_metrics(outcome.losses, schedule), **probed})
            if config.train.visualize_every_steps and step % config.train.visualize_every_steps == 0:
                self.visualize(step, batch, outcome.targets)

            if outcome.stop:
                self.save(step)
                stopped = True
                if self.env.is_main:
                    log.warning("stop requested by signal: checkpoint saved at step %d, exiting", step)
                break
            if step % config.train.checkpoint_every_steps == 0 or step == self.max_steps:
                self.save(step)
        sink.close()
        self.loader.close()
        self.tracker.finish("KILLED" if stopped else "FINISHED")
        return step
