"""DeepSpeed engine benchmarks (issue 4), run under torchrun with 2 ranks:

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/engine_overhead.py step-time
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/engine_overhead.py memory

step-time  median step time of the tiny XKD student in a DeepSpeed ZeRO-2 engine vs a plain
           torch loop (DistributedDataParallel + torch AdamW) on the same model, synthetic
           batch and process count; teacher forward and EMA included in both. Also the
           achieved FLOP/s against this CPU's measured matmul peak (MFU).
memory     per-rank bytes of optimizer state (fp32 master partition + Adam moments) and
           gradients after one step, for ZeRO-0/1/2/3 on the ViT-B MS student (206M params),
           counted from the tensors each rank holds; plus the process's peak RSS.
Rank 0 prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.distributed as dist

from xkd.config import config_from_dict, load_config
from xkd.distributed import discover, init_process_group
from xkd.ema import teacher_student_pairs
from xkd.engine.ds_config import resolve_ds_config
from xkd.engine.ema_gather import ema_update_gathered
from xkd.engine.params import decay_groups
from xkd.engine.synthetic import synthetic_batch
from xkd.models import XKD, TeacherTargets, XKDStudent


def tiny_config():
    return load_config("configs/tiny.yaml", ["train.precision=fp32"])


def timed_steps(step, steps: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        dist.barrier()
        started = time.perf_counter()
        step()
        dist.barrier()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def matmul_peak_flops(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def step_flops(config, batch_size: int) -> float:
    """FLOPs of one training step of this rank (teacher fwd + student fwd/bwd), counted on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = XKD(config)
        batch = synthetic_batch(config, batch_size)
    with FlopCounterMode(display=False) as counter:
        out = model(batch, 0.1, 0.07)
        out["loss"].backward()
    return float(counter.get_total_flops())


def step_time(steps: int, warmup: int) -> dict:
    import deepspeed

    env = discover()
    config = tiny_config()
    batch_size = config.train.micro_batch_size
    torch.manual_seed(0)
    batch = synthetic_batch(config, batch_size)

    # Plain torch: DDP + AdamW.
    torch.manual_seed(0)
    model = XKD(config)
    ddp = torch.nn.parallel.DistributedDataParallel(model.student)
    optimizer = torch.optim.AdamW(decay_groups(model.student, 0.05), lr=1e-4)
    pairs = teacher_student_pairs(model.teacher, model.student)

    def plain_step():
        targets = model.teacher(batch["video_global"], batch["audio_global"], 0.1, 0.07)
        out = ddp(batch, targets)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.student.parameters(), 0.3)
        optimizer.step()
        ema_update_gathered(pairs, 0.999, 0)

    plain = timed_steps(plain_step, steps, warmup)

    torch.manual_seed(0)
    model = XKD(config)
    ds = resolve_ds_config("ds_configs/zero2.json", config, env.world_size)
    engine, _, _, _ = deepspeed.initialize(model=model.student, config=ds,
                                           optimizer=torch.optim.AdamW(decay_groups(model.student, 0.05), lr=1e-4))
    pairs = teacher_student_pairs(model.teacher, engine.module)

    def engine_step():
        targets = model.teacher(batch["video_global"], batch["audio_global"], 0.1, 0.07)
        out = engine(batch, targets)
        engine.backward(out["loss"])
        engine.step()
        ema_update_gathered(pairs, 0.999, 2)

    zero2 = timed_steps(engine_step, steps, warmup)
    flops = step_flops(config, batch_size)
    peak = matmul_peak_flops()
    median_zero2 = statistics.median(zero2)
    return {
        "ranks": env.world_size, "micro_batch_per_rank": batch_size, "steps": steps,
        "plain_torch_median_s": statistics.median(plain), "zero2_median_s": median_zero2,
        "zero2_over_plain": median_zero2 / statistics.median(plain),
        "flops_per_rank_step": flops, "achieved_flops_per_rank": flops / median_zero2,
        "matmul_peak_flops_per_rank": peak, "mfu": flops / median_zero2 / peak,
        "torch_threads": torch.get_num_threads(),
    }


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def optimizer_state_bytes(engine, stage: int) -> int:
    """fp32 master weights this rank updates + the Adam moments of those weights."""
    base = engine.optimizer if stage == 0 else engine.optimizer.optimizer
    moments = tensor_bytes(v for state in base.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim)
    if stage in (1, 2):
        masters = tensor_bytes(engine.optimizer.single_partition_of_fp32_groups)
    elif stage == 3:
        masters = tensor_bytes(engine.optimizer.fp32_partitioned_groups_flat)
    else:
        masters = 0  # ZeRO-0 fp32: the module parameters are the master weights
    return moments + masters


def gradient_bytes(engine, stage: int) -> int:
    """Gradient storage this rank keeps for the optimizer step."""
    if stage == 0:
        return tensor_bytes(p.grad for p in engine.module.parameters() if p.grad is not None)
    if stage in (1, 2):
        grads = [g for group in engine.optimizer.averaged_gradients.values() for g in group if g is not None]
        if grads:
            return tensor_bytes(grads)
        return tensor_bytes(p.grad for p in engine.module.parameters() if p.grad is not None)
    return tensor_bytes(engine.optimizer.fp32_partitioned_groups_flat)  # grads live in .grad of the flat partitions


def memory(stages: list[int]) -> dict:
    import deepspeed

    env = discover()
    config = config_from_dict({"train": {"global_batch_size": 2, "micro_batch_size": 1, "precision": "fp32"},
                               "views": {"video_global_frames": 8, "video_local_frames": 4,
                                         "audio_global_seconds": 1.0}})
    results = {}
    for stage in stages:
        torch.manual_seed(0)
        student = XKDStudent(config)  # the teachers live outside the engine: not measured here
        student_params = sum(p.numel() for p in student.parameters())
        ds = resolve_ds_config(f"ds_configs/zero{max(stage, 1)}.json", config, env.world_size)
        if stage == 0:
            ds["zero_optimization"] = {"stage": 0}
        engine, _, _, _ = deepspeed.initialize(model=student, config=ds,
                                               optimizer=torch.optim.AdamW(decay_groups(student, 0.05), lr=1e-4))
        batch = synthetic_batch(config, 1)
        out_dim = config.model.head.out_dim
        targets = TeacherTargets(torch.softmax(torch.randn(1, out_dim), -1), torch.softmax(torch.randn(1, out_dim), -1),
                                 torch.tensor(0.0), torch.ones(1, 1), torch.ones(1, 1))
        out = engine(batch, targets)
        engine.backward(out["loss"])
        grads = gradient_bytes(engine, stage)
        engine.step()
        results[f"zero{stage}"] = {
            "student_params": student_params,
            "optimizer_state_bytes": optimizer_state_bytes(engine, stage),
            "gradient_bytes": grads,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        del engine, student
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["step-time", "memory"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--stages", default="0,1,2,3")
    args = parser.parse_args()
    env = discover()
    init_process_group(env)
    if args.what == "step-time":
        result = step_time(args.steps, args.warmup)
    else:
        result = memory([int(s) for s in args.stages.split(",")])
    if env.rank == 0:
        print(json.dumps(result, indent=2))
    dist.barrier()


if __name__ == "__main__":
    main()
