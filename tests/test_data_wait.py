"""DataWaitMonitor (xkd/engine/data_wait.py): the input-bound warning, hand-computed windows."""
from __future__ import annotations

from xkd.engine.data_wait import DataWaitMonitor


def feed(monitor: DataWaitMonitor, shares: list[float], every: int = 10) -> list[tuple[int, str]]:
    """One log window of ``every`` steps (1 s of wall time per step) per share; the warnings by step."""
    out = []
    for k, share in enumerate(shares, start=1):
        warning = monitor.add(k * every, every, share * every, float(every))
        if warning:
            out.append((k * every, warning))
    return out


def test_warns_once_when_the_last_100_steps_wait_more_than_20_percent():
    warnings = feed(DataWaitMonitor(), [0.9] + [0.5] * 20)
    # Step 10 is start-up (skipped); steps 11-110 are the first 100 steps judged: warned at 110, once.
    assert [step for step, _ in warnings] == [110]
    assert "input-bound: 50% of the wall time of the last 100 steps (to step 110)" in warnings[0][1]


def test_a_spike_or_a_light_wait_does_not_warn():
    assert feed(DataWaitMonitor(), [0.0, 0.9] + [0.1] * 9 + [0.1] * 20) == []  # (0.9 + 9 x 0.1) / 10 = 18 %
    assert feed(DataWaitMonitor(), [0.2] * 50) == []  # exactly the threshold is not above it


def test_the_window_slides():
    """20 light windows, then heavy ones: the share of the last 100 steps passes 20 % when 2 of
    its 10 windows are at 0.95 and 8 at 0.05: (2 x 0.95 + 8 x 0.05) / 10 = 23 %."""
    warnings = feed(DataWaitMonitor(), [0.05] * 21 + [0.95] * 5)
    assert [step for step, _ in warnings] == [230]


def test_console_line_of_a_log_step():
    """The plain log line written instead of a progress bar when stdout is not a terminal."""
    from xkd.engine.metrics_sink import console_line

    record = {"loss": 4.01234, "lr": 1e-3, "clips_per_second": 83.25, "data_wait_fraction": 0.124,
              "peak_memory_bytes": 3 * 2**30}
    # 20 of 200 steps done in 50 s: 180 steps left at 2.5 s each = 450 s.
    assert console_line(120, 300, record, wall_s=50.0, steps_done=20) == (
        "step 120/300 (40.0%) | loss 4.0123 | lr 1.00e-03 | 83.2 samples/s | data wait 12% | mem 3.00 GiB | "
        "eta 0:07:30")
