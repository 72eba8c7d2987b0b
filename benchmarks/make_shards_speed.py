#!/usr/bin/env python
"""Speed of data_prep/make_shards.py against bare ffmpeg, and a comparison of the video codecs.

1. Overhead: make_shards with one worker (one core transcoding) vs the same ffmpeg commands
   (same VP9 / FLAC settings, one ffmpeg per clip, run one after another), best of --repeats.
   Goal: make_shards wall time <= 1.5x the bare ffmpeg time.
2. Codecs (vp9, vp8, mjpeg, h264): make_shards encode time and video bytes per clip, then the
   decode speed of the packed videos with PyAV (all codecs, one thread) and with DALI's CPU
   backend (vp9, vp8, mjpeg; DALI decodes H.264 only on the GPU).

Usage: .venv/bin/python benchmarks/make_shards_speed.py [--clips data/sample/av] [--json out.json]
Prints a markdown report.
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

REPO = Path(__file__).resolve().parents[1]

from xkd.data.inputs import scan_folder
from xkd.data.manifest import ffmpeg_version
from xkd.data.probe import probe_source, probe_video_output
from xkd.data.transcode import CPU_DECODABLE_CODECS, TranscodeSettings, clip_command, silence_command

MAKE_SHARDS = REPO / "data_prep" / "make_shards.py"
POLICY_ARGS = ["--short-policy", "pad", "--no-audio-policy", "silence"]  # every sample clip is packed


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of waited-for child processes) of ``fn()``."""
    cpu0, wall0 = _children_cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - wall0, _children_cpu() - cpu0


def bare_ffmpeg(clips: list[Path], work: Path):
    """A function running the ffmpeg commands make_shards runs per clip (probed beforehand, not timed)."""
    settings = TranscodeSettings()
    jobs = []
    for n, clip in enumerate(clips):
        info = probe_source(clip)
        video, audio = work / f"{n}.webm", work / f"{n}.flac"
        jobs.append((clip_command(clip, info, settings, video, audio if info.audio else None), info, video, audio))

    def run() -> None:
        for command, info, video, audio in jobs:
            subprocess.run(command, check=True)
            if info.audio is None:
                # As make_shards: silence as long as the video that came out (a container without
                # a duration, e.g. MPEG-1 .mpg, has none to read; "-t 0" would never end).
                seconds = info.duration or probe_video_output(video).num_frames / settings.fps
                subprocess.run(silence_command(seconds, settings, audio), check=True)

    return run


def make_shards(clips_dir: Path, out: Path, workers: int, codec: str = "vp9") -> None:
    subprocess.run([sys.executable, str(MAKE_SHARDS), "--input", str(clips_dir), "--output", str(out),
                    "--workers", str(workers), "--video-codec", codec, "--no-progress", *POLICY_ARGS],
                   check=True, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})


def video_members(out: Path) -> list[bytes]:
    blobs = []
    for shard in sorted(out.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            blobs += [tar.extractfile(m).read() for m in tar if m.name.endswith(".webm")]
    return blobs


def mean_psnr(out: Path, clips_dir: Path) -> float:
    """Mean over clips of ffmpeg's PSNR (all planes) of each packed video against its source put
    through the same fps / scale filters without compression."""
    values = []
    with tempfile.TemporaryDirectory() as tmp:
        for shard in sorted(out.glob("train-*.tar")):
            with tarfile.open(shard) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar}
            for name, blob in members.items():
                if not name.endswith(".json"):
                    continue
                meta = json.loads(blob)
                video = Path(tmp) / "v.mkv"
                video.write_bytes(members[name[: -len("json")] + "webm"])
                ref = f"[1:v:0]fps={meta['fps']},scale={meta['width']}:{meta['height']}:flags=bicubic,setsar=1[ref]"
                proc = subprocess.run(
                    ["ffmpeg", "-nostdin", "-hide_banner", "-i", str(video), "-i", str(clips_dir / meta["source"]),
                     "-lavfi", f"{ref};[0:v:0][ref]psnr", "-f", "null", "-"],
                    capture_output=True, text=True, check=True)
                line = [ln for ln in proc.stderr.splitlines() if "PSNR" in ln and "average:" in ln][-1]
                values.append(float(line.split("average:")[1].split()[0]))
    return sum(values) / len(values)


def pyav_decode(blobs: list[bytes]) -> tuple[float, float, int]:
    """(wall s, CPU s, frames) to decode every frame to RGB with PyAV (one decoder thread)."""
    frames, start, cpu0 = 0, time.perf_counter(), time.process_time()
    for blob in blobs:
        with av.open(io.BytesIO(blob)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24")
                frames += 1
    return time.perf_counter() - start, time.process_time() - cpu0, frames


def dali_decode(out: Path, num_samples: int) -> tuple[float, float]:
    """(wall s, CPU s of this process, all threads) of DALI's CPU pipeline (webdataset reader +
    video decoder, one thread) over every sample."""
    from nvidia.dali import fn, pipeline_def

    shards = sorted(out.glob("train-*.tar"))

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipeline():
        video = fn.readers.webdataset(paths=[str(s) for s in shards],
                                      index_paths=[str(s.with_suffix(".idx")) for s in shards], ext=["webm"])
        return fn.decoders.video(video, device="cpu")

    pipe = pipeline()
    pipe.build()
    start, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(num_samples):
        pipe.run()
    return time.perf_counter() - start, time.process_time() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=REPO / "data" / "sample" / "av")
    parser.add_argument("--repeats", type=int, default=2, help="best of N for the overhead runs")
    parser.add_argument("--codecs", default="vp9,vp8,mjpeg,h264")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    clips = [item.path for item in scan_folder(args.clips)]
    results: dict = {"clips": len(clips), "clips_dir": str(args.clips)}

    with tempfile.TemporaryDirectory(prefix="make_shards_speed-") as tmp:
        tmp = Path(tmp)
        run_bare = bare_ffmpeg(clips, tmp)
        bare = min((timed(run_bare) for _ in range(args.repeats)), key=lambda t: t[0])
        ours = []
        for rep in range(args.repeats):
            out = tmp / f"ours{rep}"
            ours.append(timed(lambda: make_shards(args.clips, out, workers=1)))
        ours1 = min(ours, key=lambda t: t[0])
        ours2 = timed(lambda: make_shards(args.clips, tmp / "ours_w2", workers=2))
        results["overhead"] = {
            "bare_wall_s": bare[0], "bare_cpu_s": bare[1], "make_shards_w1_wall_s": ours1[0],
            "make_shards_w1_cpu_s": ours1[1], "make_shards_w2_wall_s": ours2[0],
            "wall_ratio": ours1[0] / bare[0], "cpu_ratio": ours1[1] / bare[1],
            "clips_per_s_per_core": len(clips) / ours1[0], "clips_per_s_2_workers": len(clips) / ours2[0],
        }

        results["codecs"] = {}
        for codec in args.codecs.split(","):
            out = tmp / f"codec_{codec}"
            wall, cpu = timed(lambda: make_shards(args.clips, out, workers=1, codec=codec))
            blobs = video_members(out)
            av_s, av_cpu, frames = pyav_decode(blobs)
            row = {"encode_wall_s": wall, "encode_cpu_s": cpu,
                   "video_bytes_per_clip": sum(map(len, blobs)) / len(blobs),
                   "psnr_db": mean_psnr(out, args.clips),
                   "frames": frames, "pyav_clips_per_s": len(blobs) / av_s, "pyav_frames_per_s": frames / av_s,
                   "pyav_frames_per_cpu_s": frames / av_cpu}
            if codec in CPU_DECODABLE_CODECS:
                dali_s, dali_cpu = min(dali_decode(out, len(blobs)) for _ in range(2))
                row |= {"dali_cpu_clips_per_s": len(blobs) / dali_s, "dali_cpu_frames_per_s": frames / dali_s,
                        "dali_cpu_frames_per_cpu_s": frames / dali_cpu}
            results["codecs"][codec] = row

    o = results["overhead"]
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"ffmpeg {ffmpeg_version()}\n")
    print(f"## make_shards vs bare ffmpeg ({len(clips)} clips from {args.clips}, best of {args.repeats})\n")
    print("| run | wall s | CPU s | clips/s |\n|---|---|---|---|")
    print(f"| bare ffmpeg, serial | {o['bare_wall_s']:.2f} | {o['bare_cpu_s']:.2f} | "
          f"{len(clips) / o['bare_wall_s']:.2f} |")
    print(f"| make_shards --workers 1 | {o['make_shards_w1_wall_s']:.2f} | {o['make_shards_w1_cpu_s']:.2f} | "
          f"{o['clips_per_s_per_core']:.2f} |")
    print(f"| make_shards --workers 2 | {o['make_shards_w2_wall_s']:.2f} | - | {o['clips_per_s_2_workers']:.2f} |")
    print(f"\nratio make_shards/bare: wall {o['wall_ratio']:.2f}x, CPU {o['cpu_ratio']:.2f}x (goal <= 1.5x)\n")
    print("## codecs\n")
    print("| codec | encode wall s / CPU s (1 worker) | video KB/clip | PSNR dB | PyAV decode clips/s (frames/s; "
          "frames per CPU s) | DALI CPU decode clips/s (frames/s; frames per CPU s) |\n|---|---|---|---|---|---|")
    for codec, r in results["codecs"].items():
        dali = (f"{r['dali_cpu_clips_per_s']:.1f} ({r['dali_cpu_frames_per_s']:.0f}; "
                f"{r['dali_cpu_frames_per_cpu_s']:.0f})" if "dali_cpu_clips_per_s" in r else "GPU only (NVDEC)")
        print(f"| {codec} | {r['encode_wall_s']:.2f} / {r['encode_cpu_s']:.2f} | "
              f"{r['video_bytes_per_clip'] / 1024:.1f} | "
              f"{r['psnr_db']:.1f} | {r['pyav_clips_per_s']:.1f} ({r['pyav_frames_per_s']:.0f}; "
              f"{r['pyav_frames_per_cpu_s']:.0f}) | {dali} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
