#!/usr/bin/env python
"""make_shards on one machine vs ``--slurm --nodes N`` on the same clips (issue 13, section 4).

    bash scripts/slurm_local_cluster.sh start --nodes 2
    SLURM_CONF=/tmp/xkd-slurm/etc/slurm.conf python benchmarks/make_shards_slurm.py --clips 16 --json out.json

Generates ``--clips`` Kinetics-like clips (10 s, 640x360, 25 fps, H.264 + AAC), shards them once on
this machine (``--workers`` = ``--nodes`` x ``--cpus``) and once as a SLURM build (``--nodes`` array
tasks of ``--cpus`` workers, then the packing job), checks that the outputs are byte-identical, and
reports: wall times, the SLURM overhead (submission, queue, Python start-up per task, packing as a
separate job), the per-core transcoding rate, the packing rate, and the projected wall time for
Kinetics-400 (240k clips) and AudioSet-2M (2M clips) on ``--project-nodes`` x ``--project-cores``.
On the test cluster every node shares this machine's cores: compare overhead, not speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAKE_SHARDS = [sys.executable, str(ROOT / "data_prep" / "make_shards.py")]
DATASETS = {"Kinetics-400 train (240k clips)": 240_000, "AudioSet-2M (2.0M clips)": 2_000_000}


def generate(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        path = folder / f"class{k % 4}" / f"clip{k:04d}.mp4"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                        "-f", "lavfi", "-i", f"sine=frequency={200 + 37 * k}:sample_rate=44100", "-t", "10",
                        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                        str(path)], check=True)


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - started, proc.stdout + proc.stderr


def log_times(folder: Path) -> dict[str, float]:
    """First task start and last task end (seconds of the day) and the packing time, from the logs."""
    starts, ends, pack = [], [], {}
    for log in folder.glob("*_log.err"):
        text = log.read_text()
        for stamp, what in re.findall(r"\[make_shards (\d\d:\d\d:\d\d)\] (task \d+: inputs|task \d+: done)", text):
            h, m, s = map(int, stamp.split(":"))
            t = h * 3600 + m * 60 + s
            if what.endswith("inputs"):
                starts.append(t)
            else:
                ends.append(t)
        packed = re.search(r"packed in ([\d.]+) s", text)
        if packed:
            pack["seconds"] = float(packed.group(1))
    return {"first_task_start": min(starts), "last_task_end": max(ends), **{f"pack_{k}": v for k, v in pack.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=1, help="workers per array task")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_make_shards_slurm")
    parser.add_argument("--project-nodes", type=int, default=16)
    parser.add_argument("--project-cores", type=int, default=32, help="cores per node in the projection")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    clips = args.work / "clips"
    generate(clips, args.clips)
    common = ["--input", str(clips), "--shard-size", "8", "--no-progress", "--short-side", "128"]
    for name in ("local", "slurm"):
        subprocess.run(["rm", "-rf", str(args.work / name)], check=True)
    cores = args.nodes * args.cpus
    local_s, _ = timed([*MAKE_SHARDS, *common, "--output", str(args.work / "local"), "--workers", str(cores)])
    slurm_s, out = timed([*MAKE_SHARDS, *common, "--output", str(args.work / "slurm"), "--workers", str(args.cpus),
                          "--slurm", "--nodes", str(args.nodes), "--time", "30", "--follow"])
    same = all((args.work / "local" / p.name).read_bytes() == p.read_bytes()
               for p in (args.work / "slurm").iterdir() if p.is_file() and p.suffix in (".tar", ".idx"))
    times = log_times(args.work / "slurm" / ".make_shards.slurm" / "slurm")
    transcode_s = times["last_task_end"] - times["first_task_start"]
    pack_s = times["pack_seconds"]
    manifest = json.loads((args.work / "slurm" / "manifest.json").read_text())
    bytes_per_clip = manifest["total_bytes"] / manifest["num_samples"]
    per_core = args.clips / (local_s * cores)  # clips/s per core, transcoding + packing on one machine
    pack_rate = args.clips / pack_s
    total_cores = args.project_nodes * args.project_cores
    projection = {}
    for dataset, count in DATASETS.items():
        transcode_h = count / (per_core * total_cores) / 3600
        projection[dataset] = {"core_hours": round(count / per_core / 3600, 1),
                               "transcode_wall_h": round(transcode_h, 2),
                               "pack_wall_h": round(count / pack_rate / 3600, 2),
                               "shard_bytes_tb": round(count * bytes_per_clip / 1e12, 2)}
    result = {
        "clips": args.clips, "nodes": args.nodes, "cpus_per_task": args.cpus, "byte_identical": same,
        "local_wall_s": round(local_s, 1), "slurm_wall_s": round(slurm_s, 1),
        "slurm_overhead_s": round(slurm_s - local_s, 1), "array_transcode_s": transcode_s,
        "pack_job_s": pack_s, "per_core_clips_per_s": round(per_core, 3),
        "pack_clips_per_s": round(pack_rate, 1),
        "pack_mb_per_s": round(pack_rate * bytes_per_clip / 1e6, 1), "shard_kb_per_clip": round(bytes_per_clip / 1e3),
        "projection": {"nodes": args.project_nodes, "cores_per_node": args.project_cores, **projection},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
