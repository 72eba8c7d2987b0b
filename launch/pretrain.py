#!/usr/bin/env python
"""XKD pretraining entry point.

Current stage (issue 2): builds the model from a config and runs training steps on
synthetic batches in a single process with torch AdamW, the spec's per-step schedules
and the EMA teacher update. The DeepSpeed engine and the WebDataset/DALI loader replace
the plain optimizer and the synthetic batches in later stages, with the same step.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xkd.config import load_config  # noqa: E402
from xkd.ema import ema_update_, teacher_student_pairs  # noqa: E402
from xkd.engine.params import decay_groups  # noqa: E402
from xkd.engine.schedule_state import schedule_at  # noqa: E402
from xkd.engine.synthetic import synthetic_batch  # noqa: E402
from xkd.models import XKD  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML experiment config")
    parser.add_argument("--max-steps", type=int, default=1, help="training steps to run")
    parser.add_argument("--steps-per-epoch", type=int, default=100, help="for the schedules on synthetic data")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    torch.manual_seed(config.train.seed)
    model = XKD(config)
    optimizer = torch.optim.AdamW(decay_groups(model.student, config.optim.weight_decay),
                                  betas=tuple(config.optim.betas), eps=config.optim.eps)
    ema_pairs = teacher_student_pairs(model.teacher, model.student)
    for step in range(args.max_steps):
        schedule = schedule_at(step, config, args.steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = schedule.learning_rate
        batch = synthetic_batch(config, config.train.micro_batch_size)
        started = time.perf_counter()
        out = model(batch, schedule.video_teacher_temperature, schedule.audio_teacher_temperature)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.student.parameters(), config.optim.grad_clip)
        optimizer.step()
        ema_update_(ema_pairs, schedule.ema_momentum)
        record = {"step": step, "seconds": round(time.perf_counter() - started, 3), "lr": schedule.learning_rate,
                  "ema_momentum": schedule.ema_momentum, **{k: round(v.item(), 5) for k, v in out.items()}}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
