#!/usr/bin/env python
"""Turn a folder of clips, a Kinetics CSV or an AudioSet CSV into WebDataset shards for XKD.

Each input becomes one sample (see xkd/data/format.py): <key>.webm (video only, --fps
frames/s, short side --short-side, VP9 by default), <key>.flac (--audio-rate Hz mono),
<key>.json (metadata) and <key>.npy (int64 numbers for DALI). Inputs that cannot be used
go to skipped.jsonl with a reason; manifest.json is written last. A rerun with the same
arguments after a crash continues where the run stopped and gives the same shards.

examples:
  make_shards.py --input /data/kinetics400/train --output /shards/k400 --split train --workers 32
  make_shards.py --list kinetics400/train.csv --media-root /data/k400/train --output /shards/k400
  make_shards.py --list balanced_train_segments.csv --media-root /data/audioset --output /shards/as
  make_shards.py --output /shards/k400 --verify          # check a finished split only
  make_shards.py --input /data/k400/train --output /shards/k400 --slurm --nodes 16 --workers 32 --follow
      # SLURM: 16 array tasks of 32 CPUs transcode, one job packs (same bytes as one machine);
      # --dry-run prints the plan and sbatch scripts; the same command again continues or attaches

filename patterns (--filename-pattern, relative to --media-root; Python format syntax,
a '*' in the file name matches any rest, the first match in sorted order is used):
  Kinetics CSV  placeholders {label} {label_dir} (spaces -> _) {youtube_id} {time_start}
                {time_end} {split}; default "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
                (the naming of the common Kinetics downloaders; use "{label_dir}/..." for
                per-class folders)
  AudioSet CSV  placeholders {ytid} {start} {end} (float seconds) {start_int} {end_int};
                default "{ytid}_{start:.3f}.*" (e.g. --PJHxphWEs_30.000.mkv, any extension)

output folder: new or empty, or one this tool wrote (a rerun resumes or confirms it; only the
  tool's own temporaries there are deleted). A folder with other files is refused, and so are
  --output equal to, inside or around --input.

skipped.jsonl reasons: missing_file (also a dangling symlink), outside_media_root (a CSV row
  whose path is absolute or has a '..' part), symlink_loop, duplicate, empty_file, not_media
  (also a fifo or socket), unsupported_container, corrupt, truncated, no_video_stream,
  no_audio_stream (--no-audio-policy skip), too_short (--short-policy skip), transcode_failed,
  no_frames. A silent (all-zero) audio track is audio.
exit status: 0 ok, 1 --verify found problems, 2 bad arguments, an unusable --output or a refused resume.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from xkd.cli_help import HelpFormatter
from xkd.data.build_shards import OutputRefused, ShardJob, build_shards
from xkd.data.inputs import InputError, read_csv_inputs, scan_folder
from xkd.data.prepare_clip import (
    NO_AUDIO_POLICIES,
    NO_VIDEO_POLICIES,
    SHORT_POLICIES,
    ClipPolicy,
)
from xkd.data.transcode import (
    CPU_DECODABLE_CODECS,
    KEYFRAME_INTERVAL,
    VIDEO_CODECS,
    TranscodeSettings,
)
from xkd.data.verify_shards import verify_output

_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 512 * 2**20, '2000000' -> 2000000."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size like 1GB, 500MB, 2GiB or a byte count")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    src = parser.add_argument_group("inputs (one of --input / --list)")
    src.add_argument("--input", type=Path, help="folder of clips, recursive; label = parent folder name")
    src.add_argument("--list", type=Path, help="Kinetics or AudioSet CSV (kind detected from the header)")
    src.add_argument("--media-root", type=Path, help="folder the CSV's files are in (default: the CSV's folder)")
    src.add_argument("--filename-pattern", help="CSV row -> file name under --media-root (see the patterns above)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, required=True, help="folder for the shards, index files and manifest")
    out.add_argument("--split", default="train", help="shard name prefix: <split>-000000.tar (default: train)")
    out.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: 1000)")
    out.add_argument("--shard-bytes", type=parse_size, default=None,
                     help="also close a shard before it passes this size, e.g. 1GB (default: no limit)")
    out.add_argument("--seed", type=int, default=0, help="shuffle seed of the input order (default: 0)")
    media = parser.add_argument_group("media")
    media.add_argument("--fps", type=int, default=8, help="video frame rate (default: 8)")
    media.add_argument("--short-side", type=int, default=128, help="video short side in pixels, even (default: 128)")
    media.add_argument("--audio-rate", type=int, default=16000, help="audio sample rate, mono FLAC (default: 16000)")
    media.add_argument("--video-codec", choices=VIDEO_CODECS, default="vp9",
                       help="vp9 (default), vp8 and mjpeg decode on DALI's CPU backend; h264 only on GPU (NVDEC)")
    media.add_argument("--keyframe-interval", type=int, default=KEYFRAME_INTERVAL, metavar="FRAMES",
                       help=f"at most this many frames between keyframes (ffmpeg -g; not for mjpeg, all keyframes): "
                            f"a loader seeking to a window decodes at most FRAMES-1 extra frames (default: "
                            f"{KEYFRAME_INTERVAL}, 1 s at 8 fps: ~10 %% less loader CPU per sample than 64 for 1.66x the "
                            "video bytes, see BENCHMARKS.md)")
    policy = parser.add_argument_group("policies")
    policy.add_argument("--min-duration", type=float, default=4.0, help="seconds (default: 4.0)")
    policy.add_argument("--short-policy", choices=SHORT_POLICIES, default="skip",
                        help="shorter than --min-duration: skip, or pad (keep; json padded=true, loaders loop/pad)")
    policy.add_argument("--no-audio-policy", choices=NO_AUDIO_POLICIES, default="skip",
                        help="no audio stream: skip (default, pretraining), or silence (keep; json has_audio=false)")
    policy.add_argument("--no-video-policy", choices=NO_VIDEO_POLICIES, default="skip",
                        help="no video stream: skip (default, pretraining), or audio-only (keep as a sample without "
                             ".webm; json has_video=false; for audio evaluation sets such as ESC-50)")
    run = parser.add_argument_group("run")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                     help="transcoding processes (default: all cores); does not change the output")
    run.add_argument("--verify", action="store_true",
                     help="re-read every shard and check it against the manifest (alone: only verify --output)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    slurm = parser.add_argument_group(
        "SLURM (--slurm: a job array transcodes, one job packs; output byte-identical to one machine)")
    slurm.add_argument("--slurm", action="store_true",
                       help="submit the build to SLURM: --nodes x --tasks-per-node transcoding tasks of --workers "
                            "CPUs each, then one packing job (xkd/data/slurm_shards.py)")
    slurm.add_argument("--nodes", type=int, default=1, help="nodes of the transcoding array (default: 1)")
    slurm.add_argument("--tasks-per-node", type=int, default=1,
                       help="array tasks per node; each gets --workers CPUs (default: 1)")
    slurm.add_argument("--partition", default=None, help="default: the cluster's default partition")
    slurm.add_argument("--account", default=None, help="sbatch --account (default: none given)")
    slurm.add_argument("--qos", default=None, help="sbatch --qos (default: none given)")
    slurm.add_argument("--time", default="24:00:00", help="time limit per task (default: 24:00:00)")
    slurm.add_argument("--mem", default=None, help="memory per task, e.g. 32G (default: the partition's)")
    slurm.add_argument("--constraint", default=None, help="node features, e.g. a CPU type (default: none)")
    slurm.add_argument("--job-name", default="make_shards", help="SLURM job name of the array and the packing job")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --sbatch exclusive=true (repeatable)")
    slurm.add_argument("--dry-run", action="store_true",
                       help="with --slurm: print the task ranges and the sbatch scripts; submit and write nothing")
    slurm.add_argument("--follow", action="store_true",
                       help="with --slurm: show overall clips done / skipped until the packing job ends (also "
                            "attaches to a build already running)")
    args = parser.parse_args(argv)
    if args.input is not None and args.list is not None:
        parser.error("give either --input DIR or --list FILE.csv, not both")
    if args.input is None and args.list is None and not args.verify:
        parser.error("give --input DIR or --list FILE.csv (or --verify alone to check --output)")
    if (args.dry_run or args.follow) and not args.slurm:
        parser.error("--dry-run and --follow go with --slurm")
    if args.slurm and args.verify:
        parser.error("--verify checks a finished split on this machine: run it without --slurm")
    return args


def _check_folders_apart(args: argparse.Namespace) -> None:
    """--output and --input must not contain each other: shards inside the input folder would be
    read back as clips (and the new output would be a folder of clips), and an input folder inside
    the output would sit among the tool's files."""
    root, output = args.input.resolve(), args.output.resolve()
    if output == root or root in output.parents:
        where = "the same folder as" if output == root else "inside"
        raise InputError(f"--output {args.output} is {where} --input {args.input}: the shards would be "
                         "scanned as clips; expected an output folder outside the input folder")
    if output in root.parents:
        raise InputError(f"--input {args.input} is inside --output {args.output}: expected an output folder "
                         "of its own, outside the input folder")


def _load_inputs(args: argparse.Namespace):
    if args.input is not None:
        _check_folders_apart(args)
        root = args.input.resolve()
        return "folder", str(root), scan_folder(root)
    media_root = (args.media_root or args.list.parent).resolve()
    kind, items = read_csv_inputs(args.list.resolve(), media_root, args.filename_pattern)
    return kind, str(media_root), items


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.output.exists() and not args.output.is_dir():
        print(f"make_shards: error: --output {args.output}: exists and is not a folder; expected a folder "
              "for the shards", file=sys.stderr)
        return 2
    missing_tools = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing_tools and (args.input is not None or args.list is not None):
        print(f"make_shards: error: {' and '.join(missing_tools)} not found on PATH "
              "(apt-get install ffmpeg, or run scripts/setup_env.sh)", file=sys.stderr)
        return 2
    if args.input is not None or args.list is not None:
        try:
            settings = TranscodeSettings(args.fps, args.short_side, args.audio_rate, args.video_codec,
                                         args.keyframe_interval)
            policy = ClipPolicy(args.min_duration, args.short_policy, args.no_audio_policy, args.no_video_policy)
            kind, root, items = _load_inputs(args)
            job = ShardJob(
                output=args.output.resolve(), inputs=items, input_kind=kind, input_root=root,
                list_file=str(args.list.resolve()) if args.list else None, filename_pattern=args.filename_pattern,
                split=args.split, shard_size=args.shard_size, shard_bytes=args.shard_bytes, seed=args.seed,
                settings=settings, policy=policy, workers=args.workers, progress=not args.no_progress)
        except (InputError, ValueError) as err:
            print(f"make_shards: error: {err}", file=sys.stderr)
            return 2
        if args.video_codec not in CPU_DECODABLE_CODECS:
            print(f"make_shards: warning: --video-codec {args.video_codec} decodes only on GPU (DALI mixed "
                  "backend / NVDEC); DALI's CPU backend reads vp9, vp8 and mjpeg only", file=sys.stderr)
        print(f"make_shards: {len(items)} inputs ({kind}) -> {job.output}", file=sys.stderr)
        if args.slurm:
            return _submit_to_slurm(args, job)
        try:
            from xkd.data.slurm_shards import refuse_while_building
            from xkd.slurm import SubmitError

            refuse_while_building(job.output)
        except SubmitError as err:
            print(f"make_shards: error: {err}", file=sys.stderr)
            return 2
        try:
            summary = build_shards(job)
        except OutputRefused as err:
            print(f"make_shards: error: {err}", file=sys.stderr)
            return 2
        state = "already complete" if summary.already_complete else (
            f"done (resumed after {summary.resumed_shards} finished shards)" if summary.resumed_shards else "done")
        reasons = ", ".join(f"{k} {v}" for k, v in summary.skipped_by_reason.items()) or "none"
        print(f"make_shards: {state}: {summary.num_samples} samples in {summary.num_shards} shards, "
              f"{summary.num_skipped} skipped ({reasons}) of {summary.num_inputs} inputs", file=sys.stderr)
    if args.verify:
        report = verify_output(args.output.resolve())
        print(report.text())
        return 0 if report.ok else 1
    return 0


def _submit_to_slurm(args: argparse.Namespace, job) -> int:
    from xkd.data.slurm_shards import ArraySpec, submit
    from xkd.slurm import SubmitError, parse_time

    try:
        extra = {}
        for item in args.sbatch:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SubmitError(f"--sbatch {item!r}: expected KEY=VALUE, e.g. exclusive=true")
            extra[key.replace("-", "_")] = True if value.lower() == "true" else value
        spec = ArraySpec(nodes=args.nodes, tasks_per_node=args.tasks_per_node, cpus_per_task=args.workers,
                         partition=args.partition, account=args.account, qos=args.qos, time_min=parse_time(args.time),
                         mem=args.mem, constraint=args.constraint, job_name=args.job_name, sbatch_extra=extra)
        return submit(job, spec, dry_run=args.dry_run, follow_up=args.follow)
    except (SubmitError, OutputRefused) as err:
        print(f"make_shards: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
