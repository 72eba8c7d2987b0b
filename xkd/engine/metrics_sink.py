"""Where a training run's numbers go: ``metrics.jsonl``, MLflow and the console, from rank 0.

The trainer hands over one record per log step (losses averaged over ranks, schedules, state);
the sink adds the log window's timing (samples/s, data-wait share, compute time), writes the
record to ``metrics.jsonl`` and MLflow, updates the progress bar on a terminal or prints one
:func:`console_line` per log step in a log file (SLURM ``.out``, nohup), and warns once when the
run is input-bound (:class:`xkd.engine.data_wait.DataWaitMonitor`).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from xkd.engine.data_wait import DataWaitMonitor

log = logging.getLogger("xkd.train")


def console_line(step: int, max_steps: int, record: dict[str, float], wall_s: float, steps_done: int) -> str:
    """One log line of a training step (as MAE's MetricLogger): progress, loss, lr, speed, input share, memory, ETA."""
    eta = (max_steps - step) * wall_s / max(steps_done, 1)
    hours, rest = divmod(int(eta), 3600)
    return (f"step {step}/{max_steps} ({100 * step / max(max_steps, 1):.1f}%) | loss {record['loss']:.4f} | "
            f"lr {record['lr']:.2e} | {record['clips_per_second']:.1f} samples/s | "
            f"data wait {100 * record['data_wait_fraction']:.0f}% | mem {record['peak_memory_bytes'] / 2**30:.2f} GiB | "
            f"eta {hours}:{rest // 60:02d}:{rest % 60:02d}")


class MetricsSink:
    """Timing windows and the outputs of one run. Every rank keeps the window timing (the
    input-bound check is the same everywhere); only ``is_main`` writes anything."""

    def __init__(self, output: Path, tracker, is_main: bool, start_step: int, max_steps: int, samples_per_step: int):
        self.tracker, self.is_main = tracker, is_main
        self.max_steps, self.samples_per_step = max_steps, samples_per_step
        self.first_step = self.last_logged = start_step
        # A progress bar on a terminal; in a log file a plain line per log step instead.
        self.interactive = is_main and sys.stdout.isatty()
        self.progress = tqdm(total=max_steps, initial=start_step, disable=not self.interactive, desc="pretrain",
                             dynamic_ncols=True, file=sys.stdout)
        self.file = (Path(output) / "metrics.jsonl").open("a") if is_main else None
        self.input_bound = DataWaitMonitor()
        self.started = time.perf_counter()
        self.window_started, self.data_wait = self.started, 0.0

    @contextmanager
    def waiting_for_data(self):
        """Time spent in here counts as data wait of the current window."""
        waited = time.perf_counter()
        try:
            yield
        finally:
            self.data_wait += time.perf_counter() - waited

    def step_done(self) -> None:
        self.progress.update(1)

    def seconds_since_start(self) -> float:
        return time.perf_counter() - self.started

    def log(self, step: int, record: dict[str, float]) -> dict[str, float]:
        """Close the log window at ``step``: add its timing to ``record`` and write it out."""
        elapsed = time.perf_counter() - self.window_started
        record = {**record,
                  # Over the window's own steps: a probe step or a resume can end a window early.
                  "clips_per_second": self.samples_per_step * (step - self.last_logged) / max(elapsed, 1e-9),
                  "data_wait_seconds": self.data_wait, "compute_seconds": elapsed - self.data_wait,
                  "data_wait_fraction": self.data_wait / max(elapsed, 1e-9)}
        warning = self.input_bound.add(step, step - self.last_logged, self.data_wait, elapsed)
        self.last_logged = step
        if self.is_main:
            if warning:
                log.warning("%s", warning)
            self.write(step, record)
            self.progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if not self.interactive:
                log.info("%s", console_line(step, self.max_steps, record, self.seconds_since_start(),
                                            step - self.first_step))
        self.window_started, self.data_wait = time.perf_counter(), 0.0
        return record

    def write(self, step: int, record: dict[str, float]) -> None:
        """One row of ``metrics.jsonl`` and the same values in MLflow (rank 0)."""
        if not self.is_main:
            return
        self.file.write(json.dumps({"step": step, **record}) + "\n")
        self.file.flush()
        self.tracker.log_metrics(record, step)

    def close(self) -> None:
        self.progress.close()
        if self.file:
            self.file.close()
