"""Per-step schedules as plain functions of the global step (docs/method.md §5)."""
from __future__ import annotations

import math


def learning_rate(step: int, *, peak: float, warmup_steps: int, total_steps: int, final: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then half-cosine to ``final`` at ``total_steps``."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    if total_steps <= warmup_steps:
        return peak
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_momentum(step: int, *, start: float, end: float, total_steps: int) -> float:
    """Cosine increase of the EMA momentum from ``start`` (step 0) to ``end`` (last step)."""
    progress = min(1.0, step / max(1, total_steps))
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))


def teacher_temperature(step: int, *, start: float, end: float, warmup_steps: int) -> float:
    """Linear warm-up of a teacher temperature from ``start`` to ``end``, then constant."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    return int(round(epochs * steps_per_epoch))
