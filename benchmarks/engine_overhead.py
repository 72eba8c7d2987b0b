"""Step time of the DeepSpeed ZeRO-2 engine against a plain torch loop, and CPU MFU (issue 4).

    OMP_NUM_THREADS=1 .venv/bin/torchrun --nproc_per_node 2 benchmarks/engine_overhead.py --steps 60

Both loops train the same XKD student (same seed, same synthetic batch, same process count)
and run the same teacher forward and EMA update, so the difference is the engine:

plain   DistributedDataParallel + the trainer's AdamW (xkd/engine/params.py) + global-norm clipping
zero2   ``deepspeed.initialize`` with ``ds_configs/zero2.json`` (merged as the trainer merges
        it) and the same AdamW as client optimizer, as the trainer builds it

``--schedule interleaved`` (default) alternates one plain step and one engine step, so a
change of machine load hits both alike; the figure is the median of the per-pair ratios.
``--schedule sequential`` builds, times and frees one loop before the next (for models too
big to hold twice, e.g. ``--config configs/xkd_ms_k400.yaml``). ``--zero key=value`` changes
the ZeRO block (e.g. ``contiguous_gradients=false``). Also reported: the FLOPs of one rank's
step (FlopCounterMode on the meta device), the achieved FLOP/s and the MFU against this CPU's
measured single-thread fp32 matmul peak. Rank 0 prints one JSON object.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist


from engine_memory import parse_zero_overrides
from xkd.config import load_config
from xkd.distributed import discover, init_process_group
from xkd.ema import teacher_student_pairs
from xkd.engine.ds_config import resolve_ds_config
from xkd.engine.ema_gather import ema_update_gathered
from xkd.engine.params import student_optimizer
from xkd.engine.synthetic import synthetic_batch
from xkd.models import XKD


def fixed_lr_optimizer(student, config):
    """The trainer's AdamW at lr 1e-4 (the trainer sets the lr every step from the schedule)."""
    optimizer = student_optimizer(student, config.optim)
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    return optimizer


def plain_loop(config, batch):
    """One training step of DDP + torch AdamW, as a closure."""
    torch.manual_seed(config.train.seed)
    model = XKD(config)
    ddp = torch.nn.parallel.DistributedDataParallel(model.student)
    optimizer = fixed_lr_optimizer(model.student, config)
    pairs = teacher_student_pairs(model.teacher, model.student)

    def step():
        with torch.no_grad():
            targets = model.teacher(batch["video_global"], batch["audio_global"], 0.1, 0.07)
        out = ddp(batch, targets)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.student.parameters(), config.optim.grad_clip)
        optimizer.step()
        ema_update_gathered(pairs, 0.999, 0)

    return step


def engine_loop(config, batch, world_size: int, zero_overrides: dict):
    """One training step of the DeepSpeed ZeRO-2 engine, as the trainer runs it."""
    import deepspeed

    torch.manual_seed(config.train.seed)
    model = XKD(config)
    ds = resolve_ds_config(Path(__file__).resolve().parents[1] / "ds_configs/zero2.json", config, world_size)
    ds["zero_optimization"].update(zero_overrides)
    optimizer = fixed_lr_optimizer(model.student, config)
    engine, _, _, _ = deepspeed.initialize(model=model.student, config=ds, optimizer=optimizer)
    pairs = teacher_student_pairs(model.teacher, engine.module)

    def step():
        with torch.no_grad():
            targets = model.teacher(batch["video_global"], batch["audio_global"], 0.1, 0.07)
        out = engine(batch, targets)
        engine.backward(out["loss"])
        engine.step()
        ema_update_gathered(pairs, 0.999, engine.zero_optimization_stage())

    return step, ds["zero_optimization"]


def timed(step) -> float:
    """Wall time of one step on every rank (barriers on both sides: the slowest rank counts)."""
    dist.barrier()
    started = time.perf_counter()
    step()
    dist.barrier()
    return time.perf_counter() - started


def matmul_peak_flops(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def step_flops(config, batch_size: int) -> float:
    """FLOPs of one training step of one rank (teacher fwd + student fwd/bwd), counted on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = XKD(config)
        batch = synthetic_batch(config, batch_size)
    with FlopCounterMode(display=False) as counter:
        out = model(batch, 0.1, 0.07)
        out["loss"].backward()
    return float(counter.get_total_flops())


def student_params(config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in XKD(config).student.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--override", action="append", default=[], help="key.sub=value, as for launch/pretrain.py")
    parser.add_argument("--zero", action="append", default=[], help="key=value set in the ZeRO-2 block")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--schedule", choices=["interleaved", "sequential"], default="interleaved")
    args = parser.parse_args()
    env = discover()
    init_process_group(env)
    config = load_config(args.config, ["train.precision=fp32",
                                       f"train.global_batch_size={env.world_size * 4}",
                                       "train.micro_batch_size=4", *args.override])
    batch_size = config.train.micro_batch_size
    torch.manual_seed(0)
    batch = synthetic_batch(config, batch_size)

    times: dict[str, list[float]] = {"plain": [], "zero2": []}
    if args.schedule == "interleaved":
        plain = plain_loop(config, batch)
        engine, zero = engine_loop(config, batch, env.world_size, parse_zero_overrides(args.zero))
        for i in range(args.warmup + args.steps):
            pair = timed(plain), timed(engine)
            if i >= args.warmup:
                times["plain"].append(pair[0])
                times["zero2"].append(pair[1])
    else:
        plain = plain_loop(config, batch)
        times["plain"] = [timed(plain) for _ in range(args.warmup + args.steps)][args.warmup:]
        del plain
        gc.collect()
        engine, zero = engine_loop(config, batch, env.world_size, parse_zero_overrides(args.zero))
        times["zero2"] = [timed(engine) for _ in range(args.warmup + args.steps)][args.warmup:]

    plain_median, zero2_median = statistics.median(times["plain"]), statistics.median(times["zero2"])
    paired = {}
    if args.schedule == "interleaved":  # step i of each loop ran back to back: their ratio is a pair
        ratios = [z / p for p, z in zip(times["plain"], times["zero2"])]
        quartiles = statistics.quantiles(ratios, n=4)
        paired = {"paired_ratio_median": statistics.median(ratios), "paired_ratio_quartiles": [quartiles[0], quartiles[2]]}
    flops = step_flops(config, batch_size)
    peak = matmul_peak_flops()
    result = {
        "config": args.config, "overrides": args.override, "zero_optimization": zero, "schedule": args.schedule,
        "ranks": env.world_size, "micro_batch_per_rank": batch_size, "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "student_params": student_params(config),
        "plain_median_s": plain_median, "zero2_median_s": zero2_median,
        "zero2_over_plain": zero2_median / plain_median,
        **paired,
        "flops_per_rank_step": flops, "achieved_flops_per_rank": flops / zero2_median,
        "matmul_peak_flops_per_rank": peak, "mfu": flops / zero2_median / peak,
    }
    if env.rank == 0:
        print(json.dumps(result, indent=2))
    dist.barrier()


if __name__ == "__main__":
    main()
