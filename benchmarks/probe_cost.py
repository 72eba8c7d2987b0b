#!/usr/bin/env python
"""Cost of one periodic probe (xkd/engine/probe.py) at tiny and ViT-B size (issue 16).

    bash scripts/make_sound_shards.sh
    OMP_NUM_THREADS=2 python benchmarks/probe_cost.py --json probe_cost.json

One process, no process group: the probe of the teacher audio encoder on the bundled sound set
(176 clips, 22 classes, the esc50-style fold-1 split), at each config's global audio view. Reports
the first probe (decoding the clips, kept in memory) and the next ones (encoder forward + scoring),
the forward FLOPs of one probe (FlopCounterMode, matrix products), and what that is on a V100 at
35 % MFU against the projected ViT-B step time of BENCHMARKS.md (0.32 s/step on 8 x V100).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from xkd.config import load_config
from xkd.engine.probe import Probe
from xkd.models import XKD

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"tiny": ROOT / "configs" / "tiny.yaml", "vit-b": ROOT / "configs" / "xkd_ms_k400.yaml"}
V100_FLOPS, MFU, VITB_STEP_S = 125e12, 0.35, 0.32  # fp16 peak, assumed MFU, 8 x V100 step (BENCHMARKS.md)


def measure(name: str, sound_shards: str, repeats: int) -> dict:
    sets = (f"probe.sets=[{{name: sounds, data: '{sound_shards}', modality: audio, "
            f"splits: 'esc50:{ROOT / 'data' / 'sounds' / 'folds.csv'}'}}]")
    config = load_config(CONFIGS[name], [sets, "probe.every_steps=1", "train.precision=fp32"])
    torch.manual_seed(0)
    teacher = XKD(config).teacher.eval()
    probe = Probe(config, rank=0, world_size=1, device=torch.device("cpu"))
    encoders = {"teacher": {"video": teacher.video_encoder, "audio": teacher.audio_encoder}}
    times = []
    for step in range(repeats + 1):
        started = time.perf_counter()
        scores = probe.run(encoders, step)
        times.append(time.perf_counter() - started)
    clips = probe._clips(probe.sets[0])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        teacher.audio_encoder(clips[0]).pooled()
    flops = counter.get_total_flops() * len(probe.sets[0].dataset.items)
    gpu_s = flops / (V100_FLOPS * MFU)
    return {"config": name, "items": len(probe.sets[0].dataset.items), "first_probe_s": round(times[0], 2),
            "probe_s": round(sum(times[1:]) / repeats, 2), "forward_gflop_per_probe": round(flops / 1e9, 1),
            "v100_forward_s_at_35_mfu": round(gpu_s, 4),
            "every_steps_for_5_percent_on_8_v100": None if name != "vit-b" else
            max(1, round(gpu_s / 8 / (0.05 * VITB_STEP_S))),
            "knn_top1": round(scores["probe/sounds/audio/teacher/knn_top1"], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sound-shards", default=str(ROOT / "sound_shards"))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = [measure(name, args.sound_shards, args.repeats) for name in args.configs]
    print(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
