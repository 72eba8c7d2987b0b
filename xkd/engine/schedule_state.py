"""The values every per-step schedule takes at a global step, from the config."""
from __future__ import annotations

from dataclasses import dataclass

from xkd.config import XKDConfig, scaled_lr
from xkd.schedules import ema_momentum, epochs_to_steps, learning_rate, teacher_temperature


@dataclass(frozen=True)
class StepSchedule:
    learning_rate: float
    ema_momentum: float
    video_teacher_temperature: float
    audio_teacher_temperature: float


def schedule_at(step: int, config: XKDConfig, steps_per_epoch: int) -> StepSchedule:
    """lr warm-up + cosine, EMA momentum cosine, teacher temperature warm-ups at ``step``."""
    # Schedules span optim.epochs; train.max_steps only stops a run early and never reshapes them.
    total = max(1, epochs_to_steps(config.optim.epochs, steps_per_epoch))
    loss, optim = config.loss, config.optim
    video_t, audio_t = loss.video_teacher_temperature, loss.audio_teacher_temperature
    return StepSchedule(
        learning_rate=learning_rate(step, peak=scaled_lr(config), final=optim.min_lr, total_steps=total,
                                    warmup_steps=epochs_to_steps(optim.warmup_epochs, steps_per_epoch)),
        ema_momentum=ema_momentum(step, start=optim.ema_momentum_start, end=optim.ema_momentum_end, total_steps=total),
        video_teacher_temperature=teacher_temperature(step, start=video_t.start, end=video_t.end,
                                                      warmup_steps=epochs_to_steps(video_t.warmup_epochs, steps_per_epoch)),
        audio_teacher_temperature=teacher_temperature(step, start=audio_t.start, end=audio_t.end,
                                                      warmup_steps=epochs_to_steps(audio_t.warmup_epochs, steps_per_epoch)),
    )
