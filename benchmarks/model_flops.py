"""FLOPs per clip of an XKD training step, and the CPU step time of the tiny config (issue 2).

    OMP_NUM_THREADS=2 python -m benchmarks.model_flops [--json out.json] [--steps 20] [--warmup 3] [--threads 1 2]

FLOPs: one clip (batch 1, default views) through one training step = teacher forward
(no grad) + student forward + student backward (encoders, decoders, heads, losses), counted
with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (shapes only, no
compute). FlopCounterMode counts matrix products (mm, addmm, bmm, attention) at 2 FLOPs
per multiply-add; elementwise work, the optimizer and the EMA are not counted. On the meta
device attention runs as the math decomposition (two bmm), which is counted; on a real CPU
the fused flash kernel is not counted at all, so the meta count is the complete one.

MAS and MATS share transformer blocks between modalities, which changes parameter counts
but not compute, and they require equal video and audio encoder sizes: for ViT-L video with
ViT-B audio only MS exists.

Step time: median over ``--steps`` real CPU steps after ``--warmup`` (forward, backward,
AdamW step, EMA update) of the tiny config at batch 2.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from xkd.config import XKDConfig, config_from_dict, load_config, scaled_lr
from xkd.ema import ema_update_, teacher_student_pairs
from xkd.engine.params import decay_groups
from xkd.engine.synthetic import synthetic_batch
from xkd.models import XKD, teacher_views
from xkd.summary import build_model, parameter_summary

ROOT = Path(__file__).resolve().parents[1]
# (variant, video encoder, audio encoder); each is counted with the teachers on global and on local views.
MODELS = [("ms", "base", "base"), ("mas", "base", "base"), ("mats", "base", "base"), ("ms", "large", "base")]


def temperatures(config: XKDConfig) -> tuple[float, float]:
    """Teacher temperatures of the first step (the value does not change any count or timing)."""
    return config.loss.video_teacher_temperature.start, config.loss.audio_teacher_temperature.start


def step_flops(model: XKD) -> dict[str, int]:
    """FLOPs of one training step at batch 1, split into teacher forward, student forward and backward.

    ``model`` should live on the meta device (see the module doc); it is used as ``XKD.forward`` does.
    """
    config = model.config
    with torch.device(next(model.parameters()).device):
        batch = synthetic_batch(config, 1)
    counters = {name: FlopCounterMode(display=False) for name in ("teacher_forward", "student_forward", "backward")}
    with counters["teacher_forward"]:
        targets = model.teacher(*teacher_views(batch, config.model.teacher_view), *temperatures(config))
    with counters["student_forward"]:
        loss = model.student(batch, targets)["loss"]
    with counters["backward"]:
        loss.backward()
    flops = {name: counter.get_total_flops() for name, counter in counters.items()}
    flops["total"] = sum(flops.values())
    return flops


def cpu_step_time(config: XKDConfig, batch_size: int = 2, warmup: int = 3, steps: int = 20,
                  threads: int | None = None) -> dict:
    """Median and spread of wall seconds per training step on the CPU (fwd + bwd + AdamW + EMA).

    ``threads`` sets torch's intra-op threads for the run (default: as configured by OMP_NUM_THREADS).
    The 1-minute load average is recorded before and after: on a shared machine it explains outliers.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(config, "cpu")
    o = config.optim
    optimizer = torch.optim.AdamW(decay_groups(model.student, o.weight_decay), lr=scaled_lr(config),
                                  betas=tuple(o.betas), eps=o.eps)
    pairs = teacher_student_pairs(model.teacher, model.student)
    batch = synthetic_batch(config, batch_size)
    load_before, seconds = os.getloadavg()[0], []
    for step in tqdm(range(warmup + steps), desc=f"CPU steps, {torch.get_num_threads()} threads", file=sys.stderr,
                     leave=False):
        start = time.perf_counter()
        loss = model(batch, *temperatures(config))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update_(pairs, o.ema_momentum_start)
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    return {"config": config.name, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "steps": steps, "warmup": warmup, "load_average_1min": [load_before, os.getloadavg()[0]]}


def cpu_model_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def tiny_config() -> XKDConfig:
    path = ROOT / "configs" / "tiny.yaml"
    if path.is_file():
        return load_config(path)
    return config_from_dict({"name": "tiny", "model": {"video_encoder": "tiny", "audio_encoder": "tiny"}})


def flop_rows() -> list[dict]:
    rows = []
    jobs = [(m, view) for m in MODELS for view in ("global", "local")]
    for (variant, video, audio), view in tqdm(jobs, desc="FLOPs", file=sys.stderr):
        config = config_from_dict({"model": {"variant": variant, "video_encoder": video, "audio_encoder": audio,
                                             "teacher_view": view}})
        model = build_model(config, "meta")
        params = parameter_summary(model)
        rows.append({"variant": variant, "video_encoder": video, "audio_encoder": audio, "teacher_view": view,
                     "trainable_params": params["trainable"], "total_params": params["total"],
                     "flops": step_flops(model)})
    return rows


def markdown(rows: list[dict], steps: list[dict]) -> str:
    """The FLOP table and the CPU step-time table."""
    giga = 1e9
    lines = [
        "| variant | video / audio encoder | teacher view | trainable params (M) | teacher fwd | student fwd "
        "| student bwd | GFLOP per clip |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        f = row["flops"]
        lines.append(
            f"| {row['variant']} | {row['video_encoder']} / {row['audio_encoder']} | {row['teacher_view']} "
            f"| {row['trainable_params'] / 1e6:.1f} | {f['teacher_forward'] / giga:.1f} "
            f"| {f['student_forward'] / giga:.1f} | {f['backward'] / giga:.1f} | **{f['total'] / giga:.1f}** |"
        )
    lines += [
        "",
        "| CPU step (fwd + bwd + AdamW + EMA) | batch | torch threads | median ms | min ms | max ms | steps (+warm-up) "
        "| load avg before / after |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for step in steps:
        lines.append(
            f"| `{step['config']}` | {step['batch_size']} | {step['threads']} | **{step['median_s'] * 1e3:.1f}** "
            f"| {step['min_s'] * 1e3:.1f} | {step['max_s'] * 1e3:.1f} | {step['steps']} (+{step['warmup']}) "
            f"| {step['load_average_1min'][0]:.2f} / {step['load_average_1min'][1]:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--steps", type=int, default=20, help="timed CPU steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed CPU steps first")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch thread counts to time the CPU step with (default: the current one)")
    args = parser.parse_args()

    rows = flop_rows()
    tiny = tiny_config()
    steps = [cpu_step_time(tiny, 2, args.warmup, args.steps, threads) for threads in args.threads]
    print(markdown(rows, steps))
    if args.json:
        result = {
            "flops": rows,
            "cpu_step_time": steps,
            "machine": {"cpu": cpu_model_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
