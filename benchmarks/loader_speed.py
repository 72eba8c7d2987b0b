"""Loader throughput (issue 3): clips/s and CPU ms per clip of the DALI CPU pipeline and the
PyTorch fallback, producing full batches of global + local views of both modalities.

    OMP_NUM_THREADS=1 python benchmarks/loader_speed.py --shards sample_shards --workers 2

Paper geometry by default (video 32x112x112 + 8x96x96, audio 80x448 + 80x112). CPU time
counts this process and its worker processes (getrusage SELF + CHILDREN).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

from xkd.config import config_from_dict
from xkd.data.dali_pipeline import DaliClipLoader
from xkd.data.sampler import EpochPlan
from xkd.data.shard_index import index_split
from xkd.data.torch_loader import TorchClipLoader


def cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def measure(make_loader, epochs: int) -> dict:
    loader = make_loader()
    next(iter(loader))  # start-up (pipeline build, workers) is not throughput
    clips, started_wall, started_cpu = 0, time.perf_counter(), cpu_seconds()
    for _ in range(epochs):
        for batch in loader:
            clips += batch["video_global"].shape[0]
    wall, cpu = time.perf_counter() - started_wall, cpu_seconds() - started_cpu
    return {"clips": clips, "clips_per_second": clips / wall, "cpu_ms_per_clip": 1000 * cpu / clips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="sample_shards")
    parser.add_argument("--workers", type=int, default=2, help="DALI threads / DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    views = config_from_dict({}).views
    samples = index_split(args.shards)
    plan = EpochPlan(len(samples), seed=0)
    results = {
        "dali_cpu": measure(lambda: DaliClipLoader(samples, views, args.batch_size, plan, seed=0, device="cpu",
                                                   num_threads=args.workers), args.epochs),
        "torch": measure(lambda: TorchClipLoader(samples, views, args.batch_size, args.workers, plan, seed=0),
                         args.epochs),
        "workers": args.workers, "batch_size": args.batch_size, "samples": len(samples),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
