"""Loader throughput and CPU cost per sample (issues 3 and 15): the DALI CPU pipeline and the
PyTorch fallback, producing full batches of global + local views of both modalities.

    OMP_NUM_THREADS=1 python benchmarks/loader_speed.py --shards sample_shards --workers 2 --json loader.json
    OMP_NUM_THREADS=1 python benchmarks/loader_speed.py --stages    # + per-stage breakdown and floor
    OMP_NUM_THREADS=1 python benchmarks/loader_speed.py --samples-per-decode 4 --json k4.json
    OMP_NUM_THREADS=1 python benchmarks/loader_speed.py --step-ms 200   # + wait per batch behind a model step
    OMP_NUM_THREADS=1 python benchmarks/loader_speed.py --gpu           # + DALI on the GPU (NVDEC), on a GPU node

``--cpu-decoder dali`` measures the DALI loader with DALI's own CPU video decoder (the GPU path's
graph) instead of PyAV (``data.cpu_video_decoder``, default pyav).

Paper geometry by default (video 32x112x112 + 8x96x96, audio 80x448 + 80x112, a rank's batch of
32 samples: ``train.max_micro_batch_size``; a loader's per-batch costs weigh 8x more per sample
at a batch of 4). By default the split is listed enough times for 8 batches per epoch. CPU time counts
this process and the loaders' worker processes: the DataLoader's (getrusage CHILDREN, as they end
each epoch) and the DALI loader's row workers (``/proc`` times: children of the fork server, not of
this process; also reported alone as ``worker_cpu_ms_per_sample``). ``--repeat N`` lists each
sample N times in the split (distinct indices, so distinct windows and augmentations), so the
per-epoch costs (a new DALI graph, new DataLoader workers) are spread as over a real split.

``--stages`` adds, per loader, the CPU ms per sample of each stage (benchmarks/torch_stages.py,
benchmarks/dali_stages.py: their docstrings say how each is measured), the decode-only floor
(the frames and audio one sample needs, same decoders) and ``cpu_ms_per_sample / floor``.
Host-to-device copies do not exist on the CPU path (n/a). The JSON (``--json OUT``) has
``cpu_ms_per_sample`` and ``samples_per_second`` per loader.

The video crops and resizes, colour jitter, blur, flip, normalisation and the audio's log-mels
and spectrogram crops are not loader work: the loaders deliver each clip's decoded uint8 window,
the audio window and every view's parameters, and the trainer cuts and finishes the views batched
on its device (``xkd.data.batch_finish``).
``device_finish`` reports that step's cost per sample run on this CPU, i.e. what CPU-only training
pays for it in its main process; on a GPU it is device time.

``--samples-per-decode K`` (``data.samples_per_decode``): each decoded clip gives K samples, so a
batch of ``--batch-size`` samples (a multiple of K) holds batch / K clips; costs stay per sample.
The stage breakdown and the floor are those of K = 1 (one sample per decode); the floor of K is
that divided by K.

``--step-ms S`` follows each batch with S ms of sleep, a stand-in for a training step on an
accelerator (it costs the host no CPU), and reports ``wait_ms_per_batch`` and
``data_wait_fraction`` (the trainer's monitor): how much of the loader's work is hidden behind
the step. The wait includes each epoch's start (a new graph / new workers), as the trainer's does;
``samples_per_second`` then includes the sleeps (it is the loop's rate, not the loader's).

``--gpu`` (a GPU node) adds ``dali_gpu``: the same DALI graph with ``device="gpu"`` (NVDEC decode,
crops on the GPU), whose ``cpu_ms_per_sample`` is what the host still pays per sample on that path,
and ``device_finish_gpu``: the finishing step's GPU wall time per sample (synchronised).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch


import dali_stages
import torch_stages
from xkd.config import config_from_dict
from xkd.data.dali_pipeline import DaliClipLoader
from xkd.data.manifest import read_manifest
from xkd.data.sampler import EpochPlan
from xkd.data.shard_index import index_split
from xkd.data.torch_loader import ClipDataset, TorchClipLoader
from xkd.data.transcode import LEGACY_KEYFRAME_INTERVAL
from xkd.data.batch_finish import BatchFinisher


def cpu_seconds() -> float:
    """CPU seconds of this process and of its children that ended (the PyTorch loader's workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def process_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds so far of live processes: the DALI loader's row workers, which are children of
    multiprocessing's fork server, not of this process (``cpu_seconds`` never counts them)."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def finish_cpu_ms(batch: dict, views, repeats: int = 5) -> float:
    """CPU ms per sample of the trainer's :class:`BatchFinisher` (video colour etc., audio log-mels)
    on this CPU (median of ``repeats``)."""
    finish, times = BatchFinisher(views), []
    for _ in range(repeats):
        begin = cpu_seconds()
        finish(batch)
        times.append(cpu_seconds() - begin)
    return 1000 * sorted(times)[len(times) // 2] / batch["audio_window"].shape[0]


def finish_gpu_ms(batch: dict, views, repeats: int = 5) -> float:
    """GPU wall ms per sample of the trainer's :class:`BatchFinisher` on the current CUDA device
    (median of ``repeats`` after a warm-up, synchronised)."""
    device = torch.device("cuda", torch.cuda.current_device())
    finish = BatchFinisher(views).to(device)
    batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
    finish(batch)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        begin = time.perf_counter()
        finish(batch)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - begin)
    return 1000 * sorted(times)[len(times) // 2] / batch["audio_window"].shape[0]


BATCHES_PER_EPOCH = 8  # the default --repeat lists the split this often at least


def measure(make_loader, epochs: int, step_ms: float = 0.0) -> dict:
    """Samples/s and CPU ms per sample over ``epochs`` epochs after a first one; with ``step_ms``,
    each batch is followed by a sleep of that long (an accelerator's training step: no host CPU),
    and the time the loop then waits for the next batch is reported as the trainer's
    ``data_wait_fraction``.

    Timed from one epoch's end to another's: a loader works ahead (DALI's prefetch, the rows read
    ahead, the batch made ahead, the DataLoader's prefetch), so once it has handed out its first
    batch the next two or three are under way, and timing from there would leave their work out
    (a fifth of the samples counted at a batch of 32). At an epoch's end what is under way is the
    next epoch's start, the same at both ends of the timing."""
    loader = make_loader()
    for _ in loader:  # start-up (pipeline build, workers) is not throughput
        pass
    samples, batches, waited = 0, 0, 0.0
    workers = getattr(loader, "worker_pids", list)()  # the DALI loader's (they live until it closes)
    started_workers = process_cpu_seconds(workers)
    started_wall, started_cpu = time.perf_counter(), cpu_seconds() + started_workers
    for _ in range(epochs):
        iterator = iter(loader)
        while True:
            asked = time.perf_counter()
            batch = next(iterator, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            samples += batch["audio_window"].shape[0]
            batches += 1
            if step_ms:
                time.sleep(step_ms / 1000)
    wall = time.perf_counter() - started_wall
    in_workers = process_cpu_seconds(workers) - started_workers
    cpu = cpu_seconds() + started_workers + in_workers - started_cpu
    loader.close()
    result = {"samples": samples, "samples_per_second": samples / wall, "cpu_ms_per_sample": 1000 * cpu / samples}
    if workers:  # of which in the row workers (the rest: the training process)
        result["worker_cpu_ms_per_sample"] = 1000 * in_workers / samples
    if step_ms and batches:
        result.update(step_ms=step_ms, wait_ms_per_batch=1000 * waited / batches,
                      data_wait_fraction=waited / (waited + batches * step_ms / 1000))
    return result


def stage_report(samples, views, plan, args) -> dict:
    """Per-stage CPU ms per sample, floor and ratio of both loaders (one thread each)."""
    dataset = ClipDataset(samples, views, seed=0, epoch=0, indices=plan.indices(0))
    torch.set_num_threads(1)
    return {
        "torch": {"stages": torch_stages.stage_costs(dataset, args.batch_size, args.stage_epochs),
                  "floor": torch_stages.floor_ms(dataset)},
        "dali_cpu": {"stages": dali_stages.stage_costs(samples, views, plan, args.batch_size, args.stage_epochs,
                                                       decoder=args.cpu_decoder),
                     "floor": dali_stages.floor_ms(samples, views, plan, args.batch_size, args.stage_epochs,
                                                   decoder=args.cpu_decoder)},
    }


def keyframe_interval(shards: str) -> int:
    """The shards' GOP (make_shards --keyframe-interval; splits from before the option used 64)."""
    return read_manifest(Path(shards))["video"].get("keyframe_interval", LEGACY_KEYFRAME_INTERVAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="sample_shards")
    parser.add_argument("--workers", type=int, default=2, help="DALI threads / DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=config_from_dict({}).train.max_micro_batch_size,
                        help="samples per batch (default: train.max_micro_batch_size, a rank's batch at paper "
                             "geometry on a 32 GB GPU)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=0,
                        help="list each sample this many times (default: enough for 8 batches per epoch)")
    parser.add_argument("--samples-per-decode", type=int, default=1,
                        help="training samples per decoded clip (data.samples_per_decode; default 1)")
    parser.add_argument("--stages", action="store_true", help="add the per-stage breakdown, floor and ratio")
    parser.add_argument("--stage-epochs", type=int, default=1, help="epochs per stage measurement (default 1)")
    parser.add_argument("--step-ms", type=float, default=0.0,
                        help="sleep this long after each batch (a training step on an accelerator) and report "
                             "the wait for the next batch (data_wait_fraction); default 0: back to back")
    parser.add_argument("--cpu-decoder", choices=("pyav", "dali"), default="pyav",
                        help="the DALI loader's CPU video decoder (data.cpu_video_decoder; default pyav)")
    parser.add_argument("--gpu", action="store_true", help="also measure DALI on the GPU (NVDEC) and the finishing there")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.samples_per_decode < 1 or args.batch_size % args.samples_per_decode:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --samples-per-decode "
                     f"{args.samples_per_decode} (a batch holds whole clips)")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA GPU visible to torch (DALI's NVDEC decode); none is")
    views = config_from_dict({}).views
    split = index_split(args.shards)
    args.repeat = args.repeat or -(-BATCHES_PER_EPOCH * args.batch_size // max(1, len(split)))
    samples = split * args.repeat
    if len(samples) < 2 * args.batch_size:
        parser.error(f"{args.shards}: {len(split)} samples x --repeat {args.repeat} make fewer than two batches of "
                     f"--batch-size {args.batch_size}: list them more times (--repeat) or lower --batch-size")
    plan = EpochPlan(len(samples), seed=0, samples_per_decode=args.samples_per_decode)
    results = {
        "dali_cpu": measure(lambda: DaliClipLoader(samples, views, args.batch_size, plan, seed=0, device="cpu",
                                                   num_threads=args.workers, cpu_decoder=args.cpu_decoder),
                            args.epochs, args.step_ms),
        "cpu_decoder": args.cpu_decoder,
        "torch": measure(lambda: TorchClipLoader(samples, views, args.batch_size, args.workers, plan, seed=0),
                         args.epochs, args.step_ms),
        "workers": args.workers, "batch_size": args.batch_size, "samples": len(samples), "repeat": args.repeat,
        "samples_per_decode": args.samples_per_decode,
        "keyframe_interval": keyframe_interval(args.shards), "host_to_device": "n/a (CPU path)",
    }
    batch = next(iter(TorchClipLoader(samples, views, args.batch_size, 0, plan, seed=0)))
    results["device_finish"] = {"cpu_ms_per_sample": finish_cpu_ms(batch, views),
                                "where": "the training device (here: this CPU, as CPU-only training runs it)"}
    if args.gpu:
        results["dali_gpu"] = measure(lambda: DaliClipLoader(samples, views, args.batch_size, plan, seed=0, device="gpu",
                                                             num_threads=args.workers), args.epochs, args.step_ms)
        results["device_finish_gpu"] = {"gpu_ms_per_sample": finish_gpu_ms(batch, views)}
    if args.stages:  # per stage at one sample per decode; the floor per sample of K is 1/K of K = 1's
        for name, report in stage_report(samples, views, EpochPlan(len(samples), seed=0), args).items():
            results[name].update(report)
            floor = report["floor"]["total"] / args.samples_per_decode
            results[name]["ratio_to_floor"] = results[name]["cpu_ms_per_sample"] / floor
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
