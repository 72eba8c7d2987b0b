#!/usr/bin/env python
"""One command for the XKD ablation (issue 12, section 2) on the small audio-visual corpus.

    python benchmarks/ablation.py            # full grid: every arm of the paper's ablation x 3 seeds
    python benchmarks/ablation.py --quick    # random init, `ae` and XKD, 1 seed (about 15 min from nothing)
    python benchmarks/ablation.py --long     # every arm, 2000 steps at a constant lr (the audio side learns)
    python benchmarks/ablation.py --arms ae xkd --seeds 0 1 --steps 300     # any sub-grid

Steps (each is skipped when its output already exists, so a rerun continues; a run directory
pretrained with other settings, or with other code, stops the rerun):

1. corpus: ``data_prep/make_av_corpus.py`` (seeded; class drives a real 0 A.D. recording and a
   rendered pattern) unless ``--corpus`` points at one;
2. shards: ``data_prep/make_shards.py`` for the pretrain, probe-train and probe-test splits, and
   for the bundled sounds (``data/sounds``, 22 classes);
3. per arm and seed: pretraining with the real engine (``deepspeed launch/pretrain.py``,
   ZeRO-2 via ``ds_configs/zero2.json``, 2 CPU ranks over gloo, ``configs/tiny.yaml`` plus the
   arm's overrides, see ``ARMS``), ``launch/export_encoders.py``, and ``eval/linear_svm.py`` on
   the teacher encoders: video and audio probe-train -> probe-test (real recordings never heard in
   pretraining), and audio on the bundled sounds of the folds never heard in pretraining (2-fold
   cross-validation, 22 classes); the random-init arm exports ``eval/random_init.py`` instead;
4. collapse monitors from each run's ``metrics.jsonl`` (mean of the last ``--monitor-window``
   rows): KL per direction, teacher entropies, student output spreads (0: one
   output for every sample), reconstruction losses;
5. one MLflow parent run (experiment ``xkd_ablation``) with a child run per arm (mean/std over
   seeds, every seed's numbers and the pretraining run ids); ``results.json`` and
   ``results.md`` (the table, beside the paper's numbers) in ``--work``.

Every run directory records the code it was made with (``code.json``: a fingerprint of the files
under ``CODE_PATHS``, the git commit, torch and DeepSpeed versions). A run is only reused by a
checkout with the same fingerprint: the same seed gives another result after any change to the
library (float rounding grows over 2000 steps), so a table is only one experiment when every run in it
comes from one code version. ``--allow-other-code`` reuses such runs anyway and names them under the
table.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOUNDS = ROOT / "data" / "sounds"
BIN = Path(sys.executable).parent
PYTHON = sys.executable

# Arm -> config overrides (key=value for launch/pretrain.py). None: no pretraining (random init).
ARMS: dict[str, dict[str, str] | None] = {
    "random": None,
    "recon_v": {"loss.recon_modalities": "video", "loss.kd_weight": "0", "loss.da_weight": "0"},
    "ae": {"loss.kd_weight": "0", "loss.da_weight": "0"},
    "ae+kd": {"loss.da_weight": "0"},
    "ae+da": {"loss.kd_weight": "0"},
    "xkd": {},  # ae + kd + da: the method
    "xkd_local": {"model.teacher_view": "local"},  # teachers on the first local view (reference code)
    "xkd_meanpool": {"model.teacher_pool": "mean"},  # plain mean pool instead of refine
    "xkd_k4": {"data.samples_per_decode": "4"},  # 4 augmented samples per decoded clip, same sample count
    "xkd_mmd_dim": {"loss.mmd_distance_scale": "dim"},  # MMD on squared distances / K (docs/method.md 4.6)
}
ARM_LABELS = {
    "random": "random init", "recon_v": "`recon_v`", "ae": "`ae`", "ae+kd": "`ae+kd`", "ae+da": "`ae+da`",
    "xkd": "`ae+kd+da` (XKD)", "xkd_local": "XKD, `teacher_view=local`", "xkd_meanpool": "XKD, mean pool (no refine)",
    "xkd_k4": "XKD, 4 samples per decode", "xkd_mmd_dim": "XKD, MMD distances / K",
}
# Paper, linear SVM top-1 (ViT-B, K400 pretraining, 400-800 epochs): UCF101 (video) and ESC50 (audio);
# Tables 1-4 of the paper. None: not reported.
PAPER = {
    "random": (None, None), "recon_v": (76.1, None), "ae": (76.3, 90.0), "ae+kd": (76.3, None),
    "ae+da": (77.8, None), "xkd": (84.7, 91.0), "xkd_local": (None, None), "xkd_meanpool": (81.0, 88.0),
    "xkd_k4": (None, None), "xkd_mmd_dim": (None, None),
}
MONITORS = ("kl_video_to_audio", "kl_audio_to_video", "teacher_entropy_video", "teacher_entropy_audio",
            "student_spread_video", "student_spread_audio", "recon_video", "recon_audio")

# Grid sizes. Steps at the grid's global batch (BASE_OVERRIDES, or --set train.global_batch_size); the
# cosine schedule is fitted to the steps (optim.epochs). 500 steps x 32 = 16 000 samples, ~67 epochs of
# the 240 pretraining clips: the shortest setting in which pretraining moved the probes (BENCHMARKS.md).
# Measured on an idle 2-core host: ~6 min per trained arm and seed, so `--quick` ~15 min from nothing
# and the full grid about 2 h; only `--long` separates the arms (BENCHMARKS.md, "Ablation").
# Not the paper's arms, so not in the grids (ask for them with --arms): xkd_k4 (issue 15's
# samples-per-decode lever) and xkd_mmd_dim (this project's switch for the kernel's distance scale).
EXTRA_ARMS = ("xkd_k4", "xkd_mmd_dim")
PAPER_ARMS = [arm for arm in ARMS if arm not in EXTRA_ARMS]
# "long": the setting in which the audio side learns (BENCHMARKS.md, "The audio MAE alone, probed" and
# the tenth session): 2000 steps at a constant learning rate (min_lr = the peak, 1e-3 at batch 32);
# ~19-21 min per arm and seed on an idle 2-core host (micro-batch 16), 7-8 h for the grid.
GRIDS = {
    "full": {"arms": PAPER_ARMS, "seeds": [0, 1, 2], "steps": 500, "train_clips": 3, "test_clips": 2},
    "quick": {"arms": ["random", "ae", "xkd"], "seeds": [0], "steps": 500, "train_clips": 3, "test_clips": 2},
    "long": {"arms": PAPER_ARMS, "seeds": [0, 1, 2], "steps": 2000, "train_clips": 3, "test_clips": 2,
             "overrides": {"optim.min_lr": "0.001"}},
}
# The corpus (make_av_corpus.py options) of a default run, and that tool's own defaults (what a
# corpus.json that does not name an option was made with). With these the video is learnable but far
# from solved (a linear SVM on raw pixels: 36 %, 8 classes), the audio as on every corpus of the tool
# (BENCHMARKS.md, "A video a model can read").
CORPUS_TOOL_DEFAULTS = {"difficulty": 1.0, "max_distractors": 3, "class_colour": 0.0, "object_scale": 1.0}
CORPUS = {"difficulty": 0.3, "max_distractors": 0, "class_colour": 0.6, "object_scale": 2.0}
# The tiny model on the corpus's 64 px, 8 fps clips: global views 2 s (16 frames, 64 px), local 1 s;
# global batch 32 at the config's learning rate (base batch 32) in one micro-batch of 16 per rank (the
# batch statistics of L_da's MMD and of the teacher centre see 16 samples, not the tiny config's 4, as
# in the paper's per-GPU batches); the paper's head width K = 8192,
# not the tiny config's 128: at K = 128 the MMD kernels still see near-orthogonal outputs and L_da
# pulls every output of both modalities onto one point, the collapse (docs/method.md 4.6;
# BENCHMARKS.md, "The head width sets what L_da does").
BASE_OVERRIDES = {"train.log_every_steps": "5", "train.visualize_every_steps": "0",
                  "train.global_batch_size": "32", "optim.base_batch_size": "32", "train.max_micro_batch_size": "16",
                  "model.head.out_dim": "8192"}
EVAL_CLIP = ["--frames", "16", "--size", "64", "--seconds", "2"]
# What decides a run's numbers besides its settings: the library, the entry points the grid calls, the
# corpus and shard tools and the configs. Not this script (its arms and grids are compared as
# settings, see run_settings) and not the docs.
CODE_PATHS = ("xkd", "launch", "eval", "data_prep", "configs", "ds_configs")
CODE_SUFFIXES = (".py", ".yaml", ".yml", ".json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the smaller grid (GRIDS['quick'])")
    size.add_argument("--long", action="store_true",
                      help="every arm for 2000 steps at a constant learning rate (GRIDS['long']; 7-8 h here)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=None, help="default: every arm")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the grid's seeds")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps per arm (default: the grid's)")
    parser.add_argument("--work", type=Path, default=None, help="default: runs/ablation/<quick|full|long>")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="an existing make_av_corpus.py output (default: <work>/../corpus, generated if missing)")
    for knob, kind in (("difficulty", float), ("max_distractors", int), ("class_colour", float),
                       ("object_scale", float)):
        parser.add_argument("--" + knob.replace("_", "-"), type=kind, default=None,
                            help=f"make_av_corpus.py option for a new corpus (default {CORPUS[knob]}); an "
                                 "existing corpus must have been made with it")
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--train-clips", type=int, default=None, help="augmented clips per probe-train item")
    parser.add_argument("--test-clips", type=int, default=None, help="clips per probe-test item")
    parser.add_argument("--monitor-window", type=int, default=5, help="metrics.jsonl rows averaged for the monitors")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every trained arm (e.g. loss.kd_weight=2)")
    parser.add_argument("--no-track", action="store_true", help="no MLflow parent/child runs")
    parser.add_argument("--allow-other-code", action="store_true",
                        help="reuse run directories made with other code than this checkout (or with "
                             "unrecorded code); the table names them")
    args = parser.parse_args(argv)
    args.grid = "quick" if args.quick else "long" if args.long else "full"
    grid = GRIDS[args.grid]
    # The grid's own overrides first: a --set of the same key wins.
    args.set = [f"{key}={value}" for key, value in grid.get("overrides", {}).items()] + args.set
    args.arms = args.arms or grid["arms"]
    args.seeds = args.seeds if args.seeds is not None else grid["seeds"]
    args.steps = args.steps or grid["steps"]
    args.train_clips = args.train_clips or grid["train_clips"]
    args.test_clips = args.test_clips or grid["test_clips"]
    args.work = args.work or ROOT / "runs" / "ablation" / args.grid
    args.corpus = args.corpus or ROOT / "runs" / "ablation" / "corpus"
    args.work, args.corpus = args.work.resolve(), args.corpus.resolve()
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
    return args


def global_batch_size(args: argparse.Namespace) -> int:
    """The pretraining global batch: a ``--set train.global_batch_size=N`` or the grid's."""
    for item in reversed(args.set):
        key, _, value = item.partition("=")
        if key == "train.global_batch_size":
            return int(value)
    return int(BASE_OVERRIDES["train.global_batch_size"])


def steps_per_epoch(shards: Path, global_batch: int = 8) -> int:
    manifest = json.loads((shards / "manifest.json").read_text())
    samples = manifest.get("num_samples") or manifest.get("samples") or sum(
        s.get("samples", s.get("num_samples", 0)) for s in manifest.get("shards", []))
    return max(1, int(samples) // global_batch)


def arm_overrides(arm: str, steps: int, spe: int, seed: int, extra: list[str] = ()) -> list[str]:
    """Every key=value launch/pretrain.py gets for one arm and seed (None for the random arm)."""
    if ARMS[arm] is None:
        raise ValueError(f"arm {arm!r} is not pretrained")
    chosen = {**ARMS[arm], **dict(item.split("=", 1) for item in extra)}
    # An epoch reads each clip samples_per_decode times: as many more steps, the same steps in all.
    epochs = max(2, math.ceil(steps / (spe * int(chosen.get("data.samples_per_decode", 1)))))
    values = {**BASE_OVERRIDES, "train.seed": str(seed), "optim.epochs": str(epochs),
              "optim.warmup_epochs": str(max(1, round(epochs * 0.1))),
              "train.checkpoint_every_steps": str(steps), **chosen}
    return [f"{k}={v}" for k, v in values.items()]


def run(command: list[str], log: Path, env: dict | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        result = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"failed (exit {result.returncode}, see {log}): {' '.join(command)}")
    print(f"  {time.time() - started:6.0f} s  {' '.join(command[:3])} ...", flush=True)


def corpus_knobs(args: argparse.Namespace) -> dict[str, float]:
    """The corpus options of this run: those given on the command line over ``CORPUS``."""
    return {knob: default if getattr(args, knob) is None else getattr(args, knob) for knob, default in CORPUS.items()}


def check_corpus(args: argparse.Namespace) -> dict[str, float]:
    """An existing corpus's options (``corpus.json``; make_av_corpus.py records those off its defaults).
    A corpus made with other options than this run's (given or default) stops the run instead of being
    measured silently."""
    recorded = json.loads((args.corpus / "corpus.json").read_text())
    made = {knob: recorded.get(knob, default) for knob, default in CORPUS_TOOL_DEFAULTS.items()}
    wanted = corpus_knobs(args)
    differ = [knob for knob in made if float(made[knob]) != float(wanted[knob])]
    if differ:
        options = " ".join(f"--{knob.replace('_', '-')} {made[knob]}" for knob in differ)
        raise SystemExit(f"error: {args.corpus / 'corpus.json'} was made with "
                         + ", ".join(f"{knob}={made[knob]}" for knob in differ) + " but this run asks for "
                         + ", ".join(f"{knob}={wanted[knob]}" for knob in differ)
                         + f"; give another --corpus, or add {options} to measure that corpus")
    return made


def prepare_data(args: argparse.Namespace) -> dict[str, Path]:
    if not (args.corpus / "corpus.json").is_file():
        print(f"generating the corpus in {args.corpus}", flush=True)
        options = [item for knob, value in corpus_knobs(args).items()
                   for item in ("--" + knob.replace("_", "-"), str(value))]
        run([PYTHON, "data_prep/make_av_corpus.py", "--output", str(args.corpus), *options],
            args.work / "logs" / "corpus.log")
    args.corpus_options = check_corpus(args)
    shards = {}
    for split in ("pretrain", "probe_train", "probe_test"):
        out = args.corpus.parent / "shards" / split
        if not (out / "manifest.json").is_file():
            run([PYTHON, "data_prep/make_shards.py", "--input", str(args.corpus / split), "--output", str(out),
                 "--short-side", "64", "--fps", "8", "--workers", "1", "--no-progress"],
                args.work / "logs" / f"shards_{split}.log")
        shards[split] = out
    shards["sounds"], shards["sounds_folds"] = unheard_sounds(args)
    return shards


def unheard_sounds(args: argparse.Namespace) -> tuple[Path, Path]:
    """A second, wider audio probe: the bundled sounds (22 classes, ``data/sounds``) sharded by
    ``scripts/make_sound_shards.sh``, and a folds file keeping only the folds the corpus never put
    into pretraining (``corpus.json`` ``split_folds``): 2-fold cross-validation over recordings no
    encoder heard, 14 of the 22 classes never heard at all."""
    out = args.corpus.parent / "shards" / "sounds"
    if not (out / "manifest.json").is_file():
        run(["bash", "scripts/make_sound_shards.sh", "--no-progress"], args.work / "logs" / "shards_sounds.log",
            env={"SOUND_SHARDS": str(out), "PYTHON": PYTHON, "WORKERS": "1"})
    return out, unheard_folds(args.corpus, args.corpus.parent / "sounds_unheard_folds.csv")


def unheard_folds(corpus: Path, output: Path) -> Path:
    """``data/sounds/folds.csv`` without the folds ``corpus`` used for pretraining, written to ``output``."""
    heard = {str(f) for f in json.loads((corpus / "corpus.json").read_text())["split_folds"]["pretrain"]}
    with open(SOUNDS / "folds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(output, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for row in rows if row["fold"] not in heard)
    return output


def latest_export(run_dir: Path) -> Path | None:
    exports = sorted(p for p in (run_dir / "export").glob("step*") if (p / "config.yaml").is_file())
    return exports[-1] if exports else None


def monitors(run_dir: Path, window: int) -> dict[str, float]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "recon_video" in r][-window:]
    out = {}
    for key in MONITORS:
        values = [float(r[key]) for r in rows if key in r]
        if values:
            out[key] = sum(values) / len(values)
    return out


def evaluate(args, export: Path, shards: dict[str, Path], out_dir: Path, seed: int) -> dict[str, float]:
    probes = {  # result key -> modality, data
        "video": ("video", ["--data", str(shards["probe_train"]), "--test-data", str(shards["probe_test"]),
                            "--dataset-name", "av_corpus"]),
        "audio": ("audio", ["--data", str(shards["probe_train"]), "--test-data", str(shards["probe_test"]),
                            "--dataset-name", "av_corpus"]),
        "audio_sounds": ("audio", ["--data", str(shards["sounds"]), "--splits", f"folds:{shards['sounds_folds']}",
                                   "--dataset-name", "sounds_unheard"]),
    }
    scores = {}
    for key, (modality, data) in probes.items():
        out = out_dir / f"linear_svm-{key}.json"
        if not out.is_file():
            run([PYTHON, "eval/linear_svm.py", "--checkpoint", str(export), "--modality", modality, *data,
                 *EVAL_CLIP, "--train-clips", str(args.train_clips), "--test-clips", str(args.test_clips),
                 "--seed", str(seed), "--workers", "0", "--output", str(out), "--no-track", "--no-progress"],
                out_dir / "eval.log")
        record = json.loads(out.read_text())
        scores[key] = float(record["mean"]["top1"])  # percent
    return scores


def run_settings(command: list[str]) -> dict[str, str]:
    """What makes a pretraining run what it is, from its ``launch/pretrain.py`` command line: the
    config, DeepSpeed config, steps and every override. Not the port or the paths (a moved work tree
    or corpus is the same run; the corpus is checked by ``check_corpus``)."""
    tail = command[command.index("launch/pretrain.py") + 1:]
    settings, index = {}, 0
    while index < len(tail):
        if tail[index].startswith("--"):
            settings[tail[index]] = tail[index + 1]
            index += 2
        else:
            key, _, value = tail[index].partition("=")
            settings[key] = value  # a later override of the same key wins, as in load_config
            index += 1
    for path_option in ("--data", "--output"):
        settings.pop(path_option, None)
    return settings


def check_existing_run(log: Path, command: list[str]) -> None:
    """A run directory already pretrained (its ``pretrain.log`` holds the command) is reused only when
    it was pretrained with this run's settings; otherwise the rerun stops instead of reporting the
    old run under the new settings."""
    logged = next((line[2:].split() for line in log.read_text(errors="replace").splitlines()
                   if line.startswith("$ ") and "launch/pretrain.py" in line), None)
    if logged is None:
        return
    # Both read as the log holds them (run() writes the words joined by spaces): an override whose
    # value has a space compares equal to itself.
    made, wanted = run_settings(logged), run_settings(" ".join(command).split())
    differ = sorted(key for key in made.keys() | wanted.keys() if made.get(key) != wanted.get(key))
    if differ:
        raise SystemExit(f"error: {log.parent} was pretrained with other settings than this run asks for: "
                         + "; ".join(f"{key} {made.get(key, 'unset')} there, {wanted.get(key, 'unset')} here"
                                     for key in differ)
                         + ". Give another --work, or remove that directory to pretrain it again")


def code_fingerprint(root: Path = ROOT) -> str:
    """A hash of every code and config file under ``CODE_PATHS`` (path and bytes), so a change to
    any of them, committed or not, gives another fingerprint."""
    digest = hashlib.sha256()
    for top in CODE_PATHS:
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_commit(root: Path = ROOT) -> str | None:
    """HEAD, with ``+dirty`` when a file under ``CODE_PATHS`` differs from it; None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *CODE_PATHS],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def code_record(root: Path = ROOT) -> dict:
    from importlib import metadata

    versions = {}
    for package in ("torch", "deepspeed"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"fingerprint": code_fingerprint(root), "git_commit": git_commit(root), **versions}


def check_run_code(run_dir: Path, code: dict, allow_other_code: bool = False) -> dict:
    """The code record of a run directory: a new directory gets this checkout's (``code.json``,
    written before anything else), an existing one must hold the same fingerprint unless
    ``allow_other_code``. A directory with outputs but no ``code.json`` was made before runs recorded
    their code: its code is unknown (fingerprint None). Returns the record the run was made with."""
    path = run_dir / "code.json"
    if path.is_file():
        try:
            made = json.loads(path.read_text())
            made["fingerprint"]
        except (ValueError, TypeError, KeyError) as error:
            raise SystemExit(f"error: {path}: expected the JSON record of the code the run was made with "
                             f"(a 'fingerprint' key), got unreadable content ({error}); remove that run "
                             "directory to run it again") from None
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        made = {"fingerprint": None, "git_commit": None}
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(code, indent=1) + "\n")
        partial.replace(path)  # atomic: a crash never leaves half a record
        return code
    if made.get("fingerprint") != code["fingerprint"]:
        there = (f"code {made['fingerprint']} (commit {made.get('git_commit')})" if made.get("fingerprint")
                 else "code that was not recorded (no code.json)")
        message = (f"{run_dir} was made with {there}, this checkout is code {code['fingerprint']} "
                   f"(commit {code.get('git_commit')})")
        if not allow_other_code:
            raise SystemExit(f"error: {message}. The same seed gives another result with other code, so "
                             "the table would mix two experiments: remove that directory to run it again, "
                             "give another --work, or pass --allow-other-code to reuse it (the table then "
                             "names it)")
        print(f"warning: {message}; reused (--allow-other-code)", flush=True)
    return made


def other_code_note(per_seed: dict[str, list[dict]], fingerprint: str) -> str:
    """The lines under the table that name every run made with other code than ``fingerprint``."""
    others = [f"{ARM_LABELS[arm]} seed {row['seed']} ({row.get('code') or 'code not recorded'})"
              for arm, rows in per_seed.items() for row in rows if row.get("code") != fingerprint]
    if not others:
        return f"\nEvery run: code {fingerprint}.\n"
    return (f"\n**Not one experiment**: made with other code than {fingerprint}: " + "; ".join(others) + ".\n")


def pretrain(args, arm: str, seed: int, shards: dict[str, Path], spe: int) -> Path:
    run_dir = args.work / "runs" / arm / f"seed{seed}"
    command = [str(BIN / "deepspeed"), "--master_port", str(free_port()), "launch/pretrain.py",
               "--config", args.config,
               "--ds_config", "ds_configs/zero2.json", "--data", str(shards["pretrain"]),
               "--output", str(run_dir), "--max-steps", str(args.steps),
               *arm_overrides(arm, args.steps, spe, seed, args.set)]
    if (run_dir / "pretrain.log").is_file():
        check_existing_run(run_dir / "pretrain.log", command)
    args.run_code[run_dir] = check_run_code(run_dir, args.code, args.allow_other_code)
    if latest_export(run_dir) is None:
        ckpts = run_dir / "checkpoints"
        if not any(ckpts.glob(f"step{args.steps:08d}*")):
            run(command, run_dir / "pretrain.log",
                env={"LOCAL_SIZE": "2", "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": tracking_uri(args)})
        run([PYTHON, "launch/export_encoders.py", str(run_dir)], run_dir / "export.log")
    return run_dir


def free_port() -> int:
    """A free TCP port for the rendezvous (29500 may be taken by another job on a shared machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tracking_uri(args) -> str:
    return f"sqlite:///{(args.work / 'mlruns.db').resolve()}"


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarize(per_seed: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for arm, rows in per_seed.items():
        entry = {"seeds": [r["seed"] for r in rows]}
        for key in ("video", "audio", "audio_sounds", *MONITORS):
            values = [r[key] for r in rows if key in r and r[key] is not None]
            if values:
                entry[key] = {**dict(zip(("mean", "std"), mean_std(values))), "n": len(values)}
        summary[arm] = entry
    return summary


def fmt(entry: dict | None, digits: int = 1) -> str:
    if not entry or entry["mean"] != entry["mean"]:
        return "-"
    if entry.get("n", 2) < 2:  # one seed: no spread to show
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def markdown_table(summary: dict[str, dict]) -> str:
    lines = [
        "| arm | video top-1 (%) | audio top-1 (%) | audio, unheard sounds (%) | paper UCF101 | paper ESC50 "
        "| KL v→a | KL a→v | H(teacher v) | H(teacher a) | spread v | spread a | recon v | recon a |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, entry in summary.items():
        paper_v, paper_a = PAPER[arm]
        lines.append("| " + " | ".join([
            ARM_LABELS[arm], fmt(entry.get("video")), fmt(entry.get("audio")), fmt(entry.get("audio_sounds")),
            "-" if paper_v is None else f"{paper_v:.1f}", "-" if paper_a is None else f"{paper_a:.1f}",
            *(fmt(entry.get(k), 2) for k in MONITORS)]) + " |")
    return "\n".join(lines) + "\n"


def track(args, summary: dict, per_seed: dict, meta: dict, table: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(args))
    mlflow.set_experiment("xkd_ablation")
    with mlflow.start_run(run_name=f"ablation-{args.grid}-{time.strftime('%Y%m%dT%H%M%S')}") as parent:
        mlflow.log_params({k: str(v)[:500] for k, v in meta.items()})
        mlflow.log_text(table, "results.md")
        mlflow.set_tags({"xkd.code": args.code["fingerprint"], "xkd.git_commit": str(args.code["git_commit"])})
        for arm, entry in summary.items():
            with mlflow.start_run(run_name=arm, nested=True):
                mlflow.set_tags({"xkd.kind": "ablation_arm", "mlflow.parentRunId": parent.info.run_id})
                mlflow.log_params({"arm": arm, "overrides": json.dumps(ARMS[arm]), "seeds": str(entry["seeds"])})
                for key, value in entry.items():
                    if isinstance(value, dict) and value["mean"] == value["mean"]:
                        mlflow.log_metric(f"{key}_mean", value["mean"])
                        mlflow.log_metric(f"{key}_std", value["std"])
                mlflow.log_text(json.dumps(per_seed[arm], indent=1), "per_seed.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    args.code, args.run_code = code_record(), {}
    print(f"code {args.code['fingerprint']} (commit {args.code['git_commit']})", flush=True)
    shards = prepare_data(args)
    spe = steps_per_epoch(shards["pretrain"], global_batch_size(args))
    per_seed: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    like: Path | None = None
    trained = [a for a in args.arms if ARMS[a] is not None]
    for arm in trained + [a for a in args.arms if ARMS[a] is None]:  # random init needs an export to copy
        for seed in args.seeds:
            print(f"[{time.time() - started:6.0f} s] arm {arm} seed {seed}", flush=True)
            if ARMS[arm] is None:
                run_dir = args.work / "runs" / arm / f"seed{seed}"
                export = run_dir / "export" / "random_init"
                args.run_code[run_dir] = check_run_code(run_dir, args.code, args.allow_other_code)
                if not (export / "config.yaml").is_file():
                    if like is None:  # nothing trained in this grid: one step to get an export
                        like = latest_export(pretrain(args, "ae", seed, shards, spe))
                    run([PYTHON, "eval/random_init.py", "--like", str(like), "--output", str(export),
                         "--seed", str(seed)], run_dir / "random_init.log")
                row = {"seed": seed, **evaluate(args, export, shards, run_dir / "eval", seed)}
            else:
                run_dir = pretrain(args, arm, seed, shards, spe)
                export = latest_export(run_dir)
                like = like or export
                row = {"seed": seed, **evaluate(args, export, shards, run_dir / "eval", seed),
                       **monitors(run_dir, args.monitor_window)}
            row["code"] = args.run_code[run_dir]["fingerprint"]
            per_seed[arm].append(row)
            print(f"    {json.dumps(row)}", flush=True)
    summary = summarize({arm: per_seed[arm] for arm in ARMS if arm in per_seed})
    meta = {"grid": args.grid, "arms": args.arms, "seeds": args.seeds, "steps": args.steps,
            "steps_per_epoch": spe, "config": args.config, "extra_overrides": args.set,
            "train_clips": args.train_clips, "test_clips": args.test_clips, "corpus": str(args.corpus),
            "corpus_options": args.corpus_options, "code": args.code,
            "wall_s": round(time.time() - started, 1)}
    result = {"meta": meta, "summary": summary, "per_seed": per_seed}
    (args.work / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown_table(summary) + other_code_note(per_seed, args.code["fingerprint"])
    (args.work / "results.md").write_text(table)
    if not args.no_track:
        track(args, summary, per_seed, meta, table)
    print(table)
    print(f"wall time {time.time() - started:.0f} s; results in {args.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
