"""Per-rank optimizer and gradient memory of the DeepSpeed engine, ZeRO-0/1/2/3 (issue 4).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/engine_memory.py --json out.json

For every (precision, ZeRO stage) the driver starts a fresh 2-rank ``torchrun`` job, so one
stage's buffers never inflate the next one's figures. Each rank builds the XKD student of
``--config`` (default: ViT-B video + ViT-B audio, MS, 206M parameters; the teachers live
outside the engine and are not built), wraps it in ``deepspeed.initialize`` with the shipped
``ds_configs/zero{1,2,3}.json`` (ZeRO-0: the ZeRO-1 file at stage 0; "auto" settings resolved
as for a GPU run, ``--device-type cpu`` for a CPU run's) and trains two steps at
micro-batch 1. Step 1 creates the Adam state; in step 2 the rank counts the bytes of every
tensor it holds, deduplicated by storage (views and flattened groups count once), twice:

at reduction    when ZeRO reduces the last gradient bucket, on entry to and on exit from
                DeepSpeed's reduction epilogue (the larger count): every bucket allocated, the
                peak of gradient memory (ZeRO-0 reduces in place and has no such moment)
before step     between backward and the optimizer step (the reduced gradients only)

Each count is split into four classes:

weights         what the module computes with (ZeRO-3: this rank's partition)
master weights  the fp32 tensors the torch AdamW updates, where they are not the weights
Adam moments    exp_avg / exp_avg_sq of those tensors
gradients       every other tensor: gradient partitions, .grad, reduce / all-gather buckets

"optimizer + gradients" = master weights + Adam moments + gradients, the memory ZeRO-1/2/3
divide across ranks; the table shows its larger count. Tensors that live only inside the
optimizer step (and the activations) are not in these counts; the peak RSS column has them.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ("weights", "master_weights", "adam_moments", "gradients")
GIB = 1024**3


def storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def live_storages() -> set[tuple[int, int]]:
    """Every tensor storage reachable from Python objects (gc), with each tensor's .grad."""
    gc.collect()
    found = set()
    for obj in gc.get_objects():
        if not torch.is_tensor(obj):
            continue
        for tensor in (obj, obj.grad):
            if tensor is not None and tensor.device.type != "meta" and tensor.untyped_storage().nbytes():
                found.add(storage_key(tensor))
    return found


def classify(engine, client_optimizer: torch.optim.Optimizer, inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, int]:
    """Bytes of this rank's live tensors by class (see the module docstring); ``inputs`` (the
    batch and teacher targets, when alive) are not the engine's and are left out."""
    owner: dict[tuple[int, int], str] = {storage_key(t): "input" for t in inputs}
    for param in engine.module.parameters():
        for tensor in (param, getattr(param, "ds_tensor", None)):  # ZeRO-3 keeps this rank's slice in ds_tensor
            if tensor is not None and tensor.untyped_storage().nbytes():
                owner[storage_key(tensor)] = "weights"
    # DeepSpeed points the torch optimizer at its fp32 partitions (ZeRO-3 only while it steps
    # them); the optimizer's state is keyed by those tensors either way.
    masters = [p for group in client_optimizer.param_groups for p in group["params"]]
    for master in [*masters, *client_optimizer.state]:
        owner.setdefault(storage_key(master), "master_weights")
    for state in client_optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.ndim:
                owner.setdefault(storage_key(value), "adam_moments")
    totals = dict.fromkeys(CLASSES, 0)
    for key in live_storages():
        kind = owner.get(key, "gradients")
        if kind != "input":
            totals[kind] += key[1]
    return totals


def parse_zero_overrides(items: list[str]) -> dict:
    """``key=value`` pairs for zero_optimization; values are JSON (``5e7`` is read as an int)."""
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        number = json.loads(value)
        overrides[key] = int(number) if isinstance(number, float) and number.is_integer() else number
    return overrides


def worker(args: argparse.Namespace) -> None:
    import deepspeed
    import torch.distributed as dist

    from xkd.config import load_config
    from xkd.distributed import discover, init_process_group
    from xkd.engine.ds_config import resolve_ds_config
    from xkd.engine.params import student_optimizer
    from xkd.engine.synthetic import synthetic_batch
    from xkd.models import TeacherTargets, XKDStudent, global_grids

    env = discover()
    init_process_group(env)
    config = load_config(args.config, [f"train.precision={args.precision}", "train.micro_batch_size=1",
                                       f"train.global_batch_size={env.world_size}", *args.override])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    torch.manual_seed(0)
    student = XKDStudent(config)
    parameters = sum(p.numel() for p in student.parameters())
    # The memory that matters is a GPU run's: resolve the files' "auto" settings as on CUDA.
    ds = resolve_ds_config(ROOT / f"ds_configs/zero{max(args.stage, 1)}.json", config, env.world_size,
                           device_type=args.device_type)
    ds["zero_optimization"].update(stage=args.stage, **parse_zero_overrides(args.zero))
    client_optimizer = student_optimizer(student, config.optim)
    engine, _, _, _ = deepspeed.initialize(model=student, config=ds, optimizer=client_optimizer)
    del student

    video_grid, audio_grid = global_grids(config)
    video_tokens, audio_tokens = torch.Size(video_grid).numel(), torch.Size(audio_grid).numel()
    out_dim = config.model.head.out_dim
    batch = {k: v.to(dtype) for k, v in synthetic_batch(config, 1).items()}
    targets = TeacherTargets(torch.softmax(torch.randn(1, out_dim), -1).to(dtype),
                             torch.softmax(torch.randn(1, out_dim), -1).to(dtype), torch.tensor(0.0, dtype=dtype),
                             torch.full((1, video_tokens), 1.0 / video_tokens, dtype=dtype),
                             torch.full((1, audio_tokens), 1.0 / audio_tokens, dtype=dtype))
    census = {}
    epilogue = getattr(engine.optimizer, "independent_gradient_partition_epilogue", None)

    inputs = (*batch.values(), *vars(targets).values())

    def counted_epilogue():
        # DeepSpeed calls this once per backward to reduce the last bucket (and, with a single
        # bucket, to allocate the gradient partitions): count on entry and on exit, keep the larger.
        entry = classify(engine, client_optimizer, inputs)
        epilogue()
        exit_ = classify(engine, client_optimizer, inputs)
        census["at_reduction"] = max(entry, exit_, key=lambda totals: sum(totals.values()))

    for step in range(2):
        if step == 1 and epilogue is not None:
            engine.optimizer.independent_gradient_partition_epilogue = counted_epilogue
        loss = engine(batch, targets)["loss"]
        engine.backward(loss)
        if step == 1:
            del batch, targets, inputs, loss
            census["before_step"] = classify(engine, client_optimizer)
        engine.step()

    result = {"rank": env.rank, "world_size": env.world_size, "stage": args.stage, "precision": args.precision,
              "student_params": parameters, "zero_optimization": ds["zero_optimization"],
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    for moment, totals in census.items():
        result[moment] = {**{f"{name}_bytes": value for name, value in totals.items()},
                          "optimizer_and_gradient_bytes": sum(v for k, v in totals.items() if k != "weights")}
    Path(args.out, f"rank{env.rank}.json").write_text(json.dumps(result))
    dist.barrier()


def run_stage(args: argparse.Namespace, stage: int, precision: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.ranks),
                   "--master_port", str(args.master_port), __file__, "--worker", "--stage", str(stage),
                   "--precision", precision, "--config", args.config, "--out", out, "--device-type", args.device_type,
                   *[f"--override={o}" for o in args.override], *[f"--zero={z}" for z in args.zero]]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"ZeRO-{stage} {precision} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.ranks)]


def peak_bytes(result: dict) -> int:
    return max(result.get("at_reduction", result["before_step"])["optimizer_and_gradient_bytes"],
               result["before_step"]["optimizer_and_gradient_bytes"])


def table(results: list[dict]) -> str:
    """Markdown table of rank 0's counts (the ranks agree to within the uneven last partition)."""
    lines = ["| precision | ZeRO | weights | master weights | Adam moments | gradients at reduction | "
             "gradients before step | **optimizer + gradients** | vs ZeRO-0 | peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    zero0: dict[str, int] = {}
    for r in results:
        before = r["before_step"]
        at_reduction = r.get("at_reduction", {}).get("gradients_bytes")
        peak = peak_bytes(r)
        zero0.setdefault(r["precision"], peak)
        lines.append(
            f"| {r['precision']} | {r['stage']} | {before['weights_bytes'] / GIB:.2f} | "
            f"{before['master_weights_bytes'] / GIB:.2f} | {before['adam_moments_bytes'] / GIB:.2f} | "
            f"{'-' if at_reduction is None else f'{at_reduction / GIB:.2f}'} | {before['gradients_bytes'] / GIB:.2f} | "
            f"**{peak / GIB:.2f}** | {peak / zero0[r['precision']]:.2f} | {r['peak_rss_bytes'] / GIB:.1f} |")
    first = results[0]
    lines.append(f"\nGiB per rank (rank 0 of {first['world_size']}); student {first['student_params'] / 1e6:.1f}M "
                 f"parameters; zero_optimization of the last job: {json.dumps(results[-1]['zero_optimization'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/xkd_ms_k400.yaml")
    parser.add_argument("--override", action="append", default=[], help="key.sub=value, as for launch/pretrain.py")
    parser.add_argument("--zero", action="append", default=[],
                        help="key=value set in every zero_optimization block (e.g. reduce_bucket_size=5e7)")
    parser.add_argument("--device-type", choices=["cuda", "cpu"], default="cuda",
                        help='resolve the ds_configs\' "auto" ZeRO settings as for this device (default: a GPU run\'s)')
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--master-port", type=int, default=29561)
    parser.add_argument("--json", help="write every rank's numbers here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from tqdm import tqdm

    jobs = [(p, int(s)) for p in args.precisions.split(",") for s in args.stages.split(",")]
    every_rank = []
    for precision, stage in tqdm(jobs, desc="ZeRO memory", unit="job"):
        every_rank += run_stage(args, stage, precision)
    if args.json:
        Path(args.json).write_text(json.dumps(every_rank, indent=2))
    print(table([r for r in every_rank if r["rank"] == 0]))


if __name__ == "__main__":
    main()
