"""Keyframe interval of make_shards (--keyframe-interval, ffmpeg -g) vs bytes and window decode cost (issue 15).

A loader seeks to the keyframe at or before its window's first frame and decodes forward, so a
window costs its own frames plus up to (GOP - 1) frames before it. For each ``--gops`` value this
builds the clips of ``--clips`` into shards with data_prep/make_shards.py, then measures

  - video bytes per clip (the .webm members) and per second of video, and make_shards CPU per clip;
  - the frames decoded before each window (window start - the keyframe at or before it);
  - the CPU ms to decode one sample's global window (``--frames`` frames, 4 s at 8 fps), seeking to
    its start, with both loaders' CPU decoder (``xkd.data.video_decode.decode_planes``: PyAV into
    YUV planes) and with DALI's CPU ``decoders.video`` (the GPU path's graph, ``cpu_video_decoder:
    dali``) at explicit frame indices of the video cut to the window's packets (as
    ``xkd.data.dali_pipeline``: ``xkd.data.video_cut``).

The windows are the same for every GOP: per clip, ``--windows`` starts spread evenly over its
valid starts. CPU time is process CPU (getrusage), single-threaded decoders.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gop_choice.py --clips data/sample/av \\
        --gops 8 16 32 64 --json gop.json

Prints a markdown table.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]

from xkd.data import format as fmt
from xkd.data.video_cut import cut_window
from xkd.data.video_decode import decode_planes

MAKE_SHARDS = REPO / "data_prep" / "make_shards.py"
POLICY_ARGS = ["--short-policy", "pad", "--no-audio-policy", "silence"]  # every sample clip is packed


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def build_split(clips: Path, out: Path, gop: int, fps: int, workers: int) -> float:
    """Shard ``clips`` with ``-g gop``; returns the CPU seconds of make_shards and its ffmpeg children."""
    before = cpu_seconds(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, str(MAKE_SHARDS), "--input", str(clips), "--output", str(out), "--fps", str(fps),
                    "--workers", str(workers), "--keyframe-interval", str(gop), "--no-progress", *POLICY_ARGS],
                   check=True, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return cpu_seconds(resource.RUSAGE_CHILDREN) - before


def read_videos(out: Path) -> dict[str, tuple[bytes, int]]:
    """Sample key -> (its .webm bytes, its stored frame count) over every shard of the split."""
    members: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return {key: (m[fmt.VIDEO_EXT], int(np.load(io.BytesIO(m[fmt.INFO_EXT]))[fmt.NUM_FRAMES]))
            for key, m in sorted(members.items()) if fmt.VIDEO_EXT in m}


def window_starts(stored_frames: int, window: int, count: int) -> list[int]:
    """``count`` window starts spread evenly over [0, stored_frames - window] (0 for a short clip)."""
    last = max(stored_frames - window, 0)
    return sorted({int(round(s)) for s in np.linspace(0, last, count)})


def keyframes(video: bytes) -> list[int]:
    """Frame numbers of the keyframes (from the demuxed packets; nothing is decoded)."""
    with av.open(io.BytesIO(video)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    return [n for n, packet in enumerate(packets) if packet.is_keyframe]


def frames_before(starts: list[int], keys: list[int]) -> list[int]:
    """Per window start, the frames decoded before it: from the keyframe at or before it."""
    return [start - max(k for k in keys if k <= start) for start in starts]


def pyav_window_ms(videos: dict, windows: dict, frames: int, fps: int, repeats: int) -> float:
    """Mean CPU ms of ``decode_planes`` (seek + decode, YUV planes) per window, best of ``repeats`` per window."""
    costs = []
    for key, starts in windows.items():
        data, stored = videos[key]
        for start in starts:
            best = float("inf")
            for _ in range(repeats):
                begin = time.process_time()
                decode_planes(data, start, frames, fps, stored_frames=stored)
                best = min(best, time.process_time() - begin)
            costs.append(best)
    return 1000 * float(np.mean(costs))


def dali_window_ms(videos: dict, windows: dict, frames: int, fps: int, repeats: int, batch_size: int = 8) -> float:
    """Mean CPU ms per window of DALI's CPU ``decoders.video`` at the window's frame indices (one
    thread; batches of ``batch_size`` windows), best of ``repeats`` passes over all windows. As in
    the loader, the source first cuts each video to its window's packets (``cut_window``, counted)."""
    from nvidia.dali import fn, pipeline_def

    rows = [(np.frombuffer(videos[key][0], dtype=np.uint8),
             np.minimum(np.arange(start, start + frames), videos[key][1] - 1).astype(np.int32))
            for key, starts in windows.items() for start in starts]
    rows += rows[: (-len(rows)) % batch_size]  # whole batches (the repeated windows are counted too)

    def source(info):
        batch = rows[info.iteration * batch_size:(info.iteration + 1) * batch_size]
        if not batch:
            raise StopIteration
        cuts = [cut_window(video, indices, fps) for video, indices in batch]
        return [c[0] for c in cuts], [c[1] for c in cuts]

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_dynamic=True)
    def pipeline():
        video, indices = fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True)
        return fn.decoders.video(video, device="cpu", frames=indices, pad_mode="none")

    best = float("inf")
    for _ in range(repeats):
        pipe = pipeline()
        pipe.build()
        begin = cpu_seconds()
        try:
            while True:
                pipe.run()
        except StopIteration:
            pass
        best = min(best, cpu_seconds() - begin)
        del pipe
    return 1000 * best / len(rows)


def measure_gop(clips: Path, gop: int, args: argparse.Namespace, work: Path) -> dict:
    out = work / f"g{gop}"
    build_cpu = build_split(clips, out, gop, args.fps, args.workers)
    videos = read_videos(out)
    windows = {key: window_starts(stored, args.frames, args.windows) for key, (_, stored) in videos.items()}
    before = [n for key, starts in windows.items() for n in frames_before(starts, keyframes(videos[key][0]))]
    video_bytes = sum(len(data) for data, _ in videos.values())
    stored_frames = sum(stored for _, stored in videos.values())
    return {
        "gop": gop, "clips": len(videos), "windows": len(before),
        "video_bytes_per_clip": video_bytes / len(videos),
        "video_kbit_per_second": 8 * video_bytes / (stored_frames / args.fps) / 1000,
        "make_shards_cpu_s_per_clip": build_cpu / len(videos),
        "frames_before_window_mean": float(np.mean(before)), "frames_before_window_max": int(max(before)),
        "pyav_window_cpu_ms": pyav_window_ms(videos, windows, args.frames, args.fps, args.repeats),
        "dali_window_cpu_ms": dali_window_ms(videos, windows, args.frames, args.fps, args.repeats),
    }


def markdown(rows: list[dict]) -> str:
    base = next((r for r in rows if r["gop"] == max(x["gop"] for x in rows)), rows[0])
    lines = ["| -g (frames) | video KB/clip | vs -g %d | kbit/s | extra frames / window (mean, max) | PyAV window "
             "CPU ms | DALI window CPU ms | make_shards CPU s/clip |" % base["gop"],
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gop']} | {r['video_bytes_per_clip'] / 1000:.1f} | "
                     f"{r['video_bytes_per_clip'] / base['video_bytes_per_clip']:.2f}x | "
                     f"{r['video_kbit_per_second']:.0f} | {r['frames_before_window_mean']:.1f}, "
                     f"{r['frames_before_window_max']} | {r['pyav_window_cpu_ms']:.1f} | {r['dali_window_cpu_ms']:.1f} | "
                     f"{r['make_shards_cpu_s_per_clip']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=REPO / "data" / "sample" / "av", help="folder of clips")
    parser.add_argument("--gops", type=int, nargs="+", default=[8, 16, 32, 64], help="-g values, in frames")
    parser.add_argument("--fps", type=int, default=8, help="make_shards --fps (default 8)")
    parser.add_argument("--frames", type=int, default=32, help="window length in frames (default 32: 4 s)")
    parser.add_argument("--windows", type=int, default=8, help="window starts per clip (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many decodes (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="make_shards --workers (default 2)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gop_choice-") as work:
        rows = [measure_gop(args.clips.resolve(), gop, args, Path(work)) for gop in sorted(args.gops)]
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
