"""Run under torchrun with 2 ranks (gloo): checks that need a real process group.

    torchrun --nproc_per_node 2 tests/distributed_checks.py RESULT.json

For ZeRO-3 and ZeRO-2 engines on the tiny model with synthetic batches, one training step, then:
- the EMA teacher equals m * teacher_before + (1 - m) * student, with the student weights
  gathered in full from the ZeRO partitions (independently of ema_update_gathered);
- KD centres, teachers and the gathered students are identical on every rank.
Rank 0 writes the findings as JSON for the pytest side to assert on.
"""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist


def main(result_path: str) -> None:
    import deepspeed

    from xkd.config import config_from_dict
    from xkd.distributed import discover, init_process_group
    from xkd.ema import teacher_student_pairs
    from xkd.engine.ds_config import resolve_ds_config
    from xkd.engine.ema_gather import ema_update_gathered
    from xkd.engine.params import decay_groups
    from xkd.engine.synthetic import synthetic_batch
    from xkd.models import XKD

    env = discover()
    init_process_group(env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = {}
    for stage in (3, 2):
        config = config_from_dict({
            "model": {"video_encoder": "tiny", "audio_encoder": "tiny", "video_tubelet": 2, "video_patch": 8,
                      "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                      "head": {"hidden_dim": 64, "bottleneck_dim": 32, "out_dim": 128}},
            "views": {"video_global_frames": 8, "video_global_size": 32, "video_local_frames": 4,
                      "video_local_size": 16, "audio_global_seconds": 2.0},
            "train": {"global_batch_size": 4, "micro_batch_size": 2, "precision": "fp32"},
        })
        torch.manual_seed(0)
        model = XKD(config)
        optimizer = torch.optim.AdamW(decay_groups(model.student, 0.05), lr=1e-3)
        ds = resolve_ds_config(f"{root}/ds_configs/zero{stage}.json", config, env.world_size)
        engine, optimizer, _, _ = deepspeed.initialize(model=model.student, optimizer=optimizer, config=ds)
        teacher = model.teacher
        pairs = teacher_student_pairs(teacher, engine.module)

        torch.manual_seed(100 + env.rank)  # different data on each rank
        batch = synthetic_batch(config, 2)
        targets = teacher(batch["video_global"], batch["audio_global"], 0.1, 0.07)
        out = engine(batch, targets)
        engine.backward(out["loss"])
        engine.step()

        before = [t.detach().clone() for t, _ in pairs]
        with deepspeed.zero.GatheredParameters([s for _, s in pairs], modifier_rank=None):
            gathered = [s.detach().clone() for _, s in pairs]
        momentum = 0.9
        ema_update_gathered(pairs, momentum, engine.zero_optimization_stage())
        expected = [momentum * b + (1 - momentum) * g for b, g in zip(before, gathered)]
        ema_error = max((t.detach() - e).abs().max().item() for (t, _), e in zip(pairs, expected))
        full_student = sum(g.numel() for g in gathered)
        partition_sizes = sum(s.numel() for _, s in pairs)  # partitioned (empty) tensors under ZeRO-3

        def spread(tensor: torch.Tensor) -> float:
            """Largest difference of this tensor between ranks."""
            copies = [torch.empty_like(tensor) for _ in range(env.world_size)]
            dist.all_gather(copies, tensor.contiguous())
            return max((c - copies[0]).abs().max().item() for c in copies)

        results[f"zero{stage}"] = {
            "ema_max_error": ema_error,
            "gathered_student_elements": full_student,
            "local_student_elements": partition_sizes,
            "centre_spread": max(spread(teacher.video_centre.value), spread(teacher.audio_centre.value)),
            "centre_nonzero": float(teacher.video_centre.value.abs().sum()),
            "teacher_spread": max(spread(t.detach()) for t, _ in pairs),
            "student_spread": max(spread(g) for g in gathered),
            "world_size": env.world_size,
        }
        del engine, optimizer
    if env.rank == 0:
        with open(result_path, "w") as handle:
            json.dump(results, handle, indent=2)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
