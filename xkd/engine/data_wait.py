"""Is the run input-bound? ``data_wait_fraction`` per log window, and one warning when it stays high.

The trainer times how long each step waits for its batch (``data_wait_seconds``) against the log
window's wall time. A share above ``threshold`` (20 %) over the last ``window_steps`` steps means
the GPUs idle behind the input pipeline: the monitor says so once, with what to change.
"""
from __future__ import annotations

from collections import deque


class DataWaitMonitor:
    def __init__(self, threshold: float = 0.2, window_steps: int = 100, skip_steps: int = 10):
        self.threshold, self.window_steps, self.skip_steps = threshold, window_steps, skip_steps
        self.windows: deque[tuple[int, float, float]] = deque()  # (steps, waited s, wall s) per log window
        self.warned = False

    def add(self, step: int, steps: int, waited: float, wall: float) -> str | None:
        """Record one log window (``steps`` steps ending at ``step``); returns the warning, once."""
        if step <= self.skip_steps:  # start-up: the loader's first batches, pipeline builds
            return None
        self.windows.append((steps, waited, wall))
        while sum(s for s, _, _ in self.windows) - self.windows[0][0] >= self.window_steps:
            self.windows.popleft()
        covered = sum(s for s, _, _ in self.windows)
        share = sum(w for _, w, _ in self.windows) / max(sum(t for _, _, t in self.windows), 1e-9)
        if self.warned or covered < self.window_steps or share <= self.threshold:
            return None
        self.warned = True
        return (f"input-bound: {share:.0%} of the wall time of the last {covered} steps (to step {step}) was spent "
                f"waiting for data (threshold {self.threshold:.0%}): give the loader more CPU (data.num_workers, "
                "CPU cores per GPU: README 'Sizing a cluster'), use data.device=gpu for DALI, or shard with "
                "a cheaper codec")
