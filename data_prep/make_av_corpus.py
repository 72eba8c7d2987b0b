#!/usr/bin/env python
"""Generate a small, seeded audio-visual corpus where cross-modal knowledge is measurable.

Real audio-visual clips in volume cannot be had on a small machine, so this tool renders
them: every clip is an ordinary ``.mp4`` (H.264 video + AAC audio) whose **class drives both
modalities**:

* **sound** - a *real* recording of the class from the bundled 0 A.D. sound set
  (``data/sounds``, CC-BY-SA-3.0): the recording (chosen at random among the class's
  recordings allowed for the split) is peak-normalised, given a random gain, placed 1-3
  times at random offsets in the clip, and mixed with coloured noise at a random SNR;
* **picture** - a rendered object whose *shape*, *motion* and *texture* are fixed by the
  class, under strong nuisance: a random smooth background, random colours and contrast,
  random start position, size and speed, pixel noise, and 1-3 smaller, intermittently
  visible distractor objects drawn from the same pool of shapes, motions and textures.
  Classes share attributes (several classes have the same shape, others the same motion),
  so only the combination identifies a class; with distractors built from the same pool, a
  video-only model has to find the main object and bind its attributes - much harder than
  hearing the class (the paper's Figure 2: audio is the sharper teacher). Four knobs make
  it easier: ``--difficulty`` (contrast, pixel noise, audio SNR), ``--max-distractors``
  (0: the class object alone), ``--class-colour`` (the object's colour pulled towards a
  colour of its class) and ``--object-scale`` (a larger class object: a mean-pooled
  representation, as the linear evaluation uses, dilutes an object that covers a few
  patches); each leaves every other nuisance of a clip as it was.

Splits are disjoint by construction: ``pretrain``, ``probe_train`` and ``probe_test`` clips
are drawn with different seeds, and **each split uses its own real recordings**: within a
class, recordings of folds 1-2 (``data/sounds/folds.csv``) go to pretraining, fold 3 to
probe-train and fold 4 to probe-test, so the audio probe is measured on real recordings
never heard in pretraining.

Output layout (label = parent folder, ready for ``make_shards.py --input``)::

    OUT/pretrain/<class>/<class>_pretrain_0000.mp4
    OUT/probe_train/<class>/...
    OUT/probe_test/<class>/...
    OUT/splits/{pretrain,probe_train,probe_test}.txt     relative paths, one per line
    OUT/corpus.json                                      arguments, classes, per-clip metadata

Everything is deterministic in ``--seed`` (per-clip generators from ``(seed, split, index)``,
single-threaded bit-exact encoders), so two runs give byte-identical files.

    python data_prep/make_av_corpus.py --output av_corpus                   # 8 classes, 400 clips
    python data_prep/make_av_corpus.py --output av_small --classes 4 \\
        --pretrain-per-class 8 --probe-train-per-class 4 --probe-test-per-class 4
    python data_prep/make_shards.py --input av_corpus/pretrain --output av_shards/pretrain \\
        --short-side 64 --video-codec vp9
"""
from __future__ import annotations

import argparse
import colorsys
import csv
import hashlib
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import lfilter, resample_poly

from xkd.cli_help import HelpFormatter

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOUNDS = ROOT / "data" / "sounds"
VERSION = 1
SPLITS = ("pretrain", "probe_train", "probe_test")
SPLIT_FOLDS = {"pretrain": (1, 2), "probe_train": (3,), "probe_test": (4,)}
SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond")
MOTIONS = ("bounce", "orbit", "zigzag", "pulse")
TEXTURES = ("solid", "stripes", "checker")


@dataclass(frozen=True)
class ClassSpec:
    name: str
    shape: str
    motion: str
    texture: str


def select_classes(sounds: Path, count: int) -> list[str]:
    """``count`` classes of the sound set, evenly spaced in sorted order (no cherry-picking)."""
    with open(sounds / "folds.csv", newline="") as handle:
        names = sorted({row["category"] for row in csv.DictReader(handle)})
    if not 2 <= count <= len(names):
        raise SystemExit(f"error: --classes must be between 2 and {len(names)}, got {count}")
    picks = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in picks]


def class_specs(names: list[str]) -> list[ClassSpec]:
    """Distinct (shape, motion, texture) per class, attributes shared across classes.

    The combinations are taken in a fixed interleaved order so neighbouring classes differ in
    one or two attributes, not all three; nothing depends on the seed.
    """
    combos = list(itertools.product(range(len(SHAPES)), range(len(MOTIONS)), range(len(TEXTURES))))
    order = sorted(combos, key=lambda c: ((c[0] * 7 + c[1] * 5 + c[2] * 3) % len(combos), c))
    chosen, seen_shape = [], {}
    for combo in order:
        if len(chosen) == len(names):
            break
        if seen_shape.get(combo[0], 0) >= 2:  # at most two classes per shape
            continue
        seen_shape[combo[0]] = seen_shape.get(combo[0], 0) + 1
        chosen.append(combo)
    for combo in order:  # more classes than 2 x shapes: fill with the rest
        if len(chosen) == len(names):
            break
        if combo not in chosen:
            chosen.append(combo)
    return [ClassSpec(name, SHAPES[s], MOTIONS[m], TEXTURES[t]) for name, (s, m, t) in zip(names, chosen)]


def class_colours(count: int) -> np.ndarray:
    """(count, 3) RGB in [0, 1]: fully saturated hues evenly spaced around the colour wheel."""
    return np.array([colorsys.hsv_to_rgb(i / count, 1.0, 1.0) for i in range(count)])


def recordings(sounds: Path, names: list[str]) -> dict[str, dict[str, list[str]]]:
    """Per split and class, the recordings (relative to ``sounds/clips``) the split may use."""
    out = {split: {name: [] for name in names} for split in SPLITS}
    with open(sounds / "folds.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] not in names:
                continue
            for split, folds in SPLIT_FOLDS.items():
                if int(row["fold"]) in folds:
                    out[split][row["category"]].append(row["filename"])
    for split in SPLITS:
        for name in names:
            out[split][name].sort()
            if not out[split][name]:
                raise SystemExit(f"error: class {name!r} has no recording for split {split!r}")
    return out


def load_sound(path: Path, rate: int) -> np.ndarray:
    data, source_rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    mono = data.mean(axis=1)
    if source_rate != rate:
        g = np.gcd(int(source_rate), rate)
        mono = resample_poly(mono, rate // g, int(source_rate) // g)
    peak = np.abs(mono).max()
    return mono / peak if peak > 0 else mono


# ----------------------------------------------------------------------------- audio

def render_audio(rng: np.random.Generator, sound: np.ndarray, samples: int, rate: int,
                 difficulty: float = 1.0) -> tuple[np.ndarray, dict]:
    """The recording 1-3 times at random offsets and gains, plus coloured noise at a random SNR
    (0-15 dB at difficulty 1, raised by 20 dB x (1 - difficulty))."""
    signal = np.zeros(samples)
    repeats = int(rng.integers(1, 4))
    sound = sound[: samples]
    for _ in range(repeats):
        offset = int(rng.integers(0, max(1, samples - len(sound) // 2)))
        piece = sound[: samples - offset] * rng.uniform(0.4, 1.0)
        signal[offset: offset + len(piece)] += piece
    colour = rng.uniform(0.0, 0.95)  # 0 white ... 0.95 nearly brown
    noise = lfilter([1.0], [1.0, -colour], rng.standard_normal(samples))
    snr_db = rng.uniform(0.0, 15.0) + 20.0 * (1.0 - difficulty)
    power = np.mean(signal ** 2) + 1e-12
    noise *= np.sqrt(power / (np.mean(noise ** 2) + 1e-12) / 10 ** (snr_db / 10))
    mix = signal + noise
    mix *= rng.uniform(0.3, 0.9) / (np.abs(mix).max() + 1e-9)
    return mix.astype(np.float32), {"repeats": repeats, "snr_db": round(float(snr_db), 2),
                                    "noise_colour": round(float(colour), 3)}


# ----------------------------------------------------------------------------- video

def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "disc":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        return ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    raise ValueError(shape)


def texture_field(texture: str, dx: np.ndarray, dy: np.ndarray, r: float, phase: float) -> np.ndarray:
    period = max(2.0, r / 1.5)
    if texture == "solid":
        return np.ones_like(dx)
    if texture == "stripes":
        return (np.floor((dx + phase) / period) % 2).astype(np.float64) * 0.8 + 0.2
    if texture == "checker":
        return ((np.floor(dx / period) + np.floor((dy + phase) / period)) % 2) * 0.8 + 0.2
    raise ValueError(texture)


def trajectory(rng: np.random.Generator, motion: str, frames: int, size: int, speed: float) -> np.ndarray:
    """(frames, 3): x, y, scale factor per frame."""
    t = np.arange(frames, dtype=np.float64)
    margin = size * 0.2
    x0, y0 = rng.uniform(margin, size - margin, size=2)
    scale = np.ones(frames)
    if motion == "bounce":
        angle = rng.uniform(0, 2 * np.pi)
        span = size - 2 * margin
        def tri(v):  # reflect at the walls: 0 ... span
            return span - np.abs(v % (2 * span) - span)
        xs = margin + tri(x0 - margin + speed * np.cos(angle) * t)
        ys = margin + tri(y0 - margin + speed * np.sin(angle) * t)
    elif motion == "orbit":
        radius = rng.uniform(0.15, 0.3) * size
        cx, cy = rng.uniform(radius, size - radius, size=2)
        omega = speed / radius * rng.choice([-1.0, 1.0])
        phase = rng.uniform(0, 2 * np.pi)
        xs, ys = cx + radius * np.cos(omega * t + phase), cy + radius * np.sin(omega * t + phase)
    elif motion == "zigzag":
        direction = rng.choice([-1.0, 1.0])
        xs = (x0 + direction * speed * 0.6 * t) % size
        ys = y0 + 0.18 * size * np.sign(np.sin(t * speed / 3.0 + rng.uniform(0, 6.3)))
    elif motion == "pulse":
        xs = x0 + rng.normal(0, 0.6, frames).cumsum() * 0.3
        ys = y0 + rng.normal(0, 0.6, frames).cumsum() * 0.3
        scale = 1.0 + 0.45 * np.sin(t * speed / 2.0 + rng.uniform(0, 6.3))
    else:
        raise ValueError(motion)
    return np.stack([xs, ys, scale], axis=1)


def smooth_background(rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """(frames, size, size, 3) slowly drifting low-frequency colour noise in [0, 1]."""
    coarse = rng.uniform(0, 1, size=(4, 4, 3))
    coarse = coarse * rng.uniform(0.3, 1.0) + rng.uniform(0, 0.5)
    grid = np.linspace(0, 3, size)
    i0 = np.clip(np.floor(grid).astype(int), 0, 2)
    w = (grid - i0)[:, None]
    rows = coarse[i0] * (1 - w[..., None]) + coarse[i0 + 1] * w[..., None]  # (size, 4, 3)
    image = rows[:, i0] * (1 - w.T[..., None]) + rows[:, i0 + 1] * w.T[..., None]  # (size, size, 3)
    drift = rng.uniform(-0.6, 0.6, size=2)
    out = np.empty((frames, size, size, 3))
    for f in range(frames):
        out[f] = np.roll(image, (int(round(drift[0] * f)), int(round(drift[1] * f))), axis=(0, 1))
    return np.clip(out, 0, 1)


def draw_object(video: np.ndarray, spec: tuple[str, str, str], path: np.ndarray, radius: float, colour: np.ndarray,
                visible: np.ndarray, alpha: float, phase_speed: float) -> None:
    frames, size = video.shape[0], video.shape[1]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    shape, _, texture = spec
    for f in range(frames):
        if not visible[f]:
            continue
        x, y, s = path[f]
        r = radius * s
        dx, dy = xs - x, ys - y
        mask = shape_mask(shape, dx, dy, r)
        if not mask.any():
            continue
        tex = texture_field(texture, dx, dy, r, phase_speed * f)
        fill = colour[None, None, :] * tex[..., None]
        video[f][mask] = (1 - alpha) * video[f][mask] + alpha * fill[mask]


def render_video(rng: np.random.Generator, spec: ClassSpec, size: int, frames: int, all_specs: list[tuple[str, str, str]],
                 difficulty: float, max_distractors: int = 3, class_colour: np.ndarray | None = None,
                 colour_cue: float = 0.0, object_scale: float = 1.0) -> tuple[np.ndarray, dict]:
    """(frames, size, size, 3) uint8 frames: the class object plus nuisance (see module docstring).
    At most ``max_distractors`` of the 1-3 distractors drawn are rendered; all are drawn, so a clip's
    other nuisances do not depend on ``max_distractors``. The class object's colour is its random colour
    moved a fraction ``colour_cue`` of the way to ``class_colour`` (drawn either way, same reason), its
    radius (0.12-0.18 of the frame) multiplied by ``object_scale``."""
    video = smooth_background(rng, size, frames)
    drawn = int(rng.integers(1, 4))
    distractors = min(drawn, max_distractors)
    for number in range(drawn):
        shape, motion, texture = all_specs[int(rng.integers(len(all_specs)))]
        path = trajectory(rng, motion, frames, size, rng.uniform(0.8, 3.0))
        visible = rng.uniform(size=frames) < rng.uniform(0.3, 0.8)
        radius, colour, alpha, phase_speed = (rng.uniform(0.06, 0.11) * size, rng.uniform(0, 1, 3),
                                              rng.uniform(0.3, 0.9), rng.uniform(-1.5, 1.5))
        if number < distractors:
            draw_object(video, (shape, motion, texture), path, radius, colour, visible, alpha, phase_speed)
    speed = rng.uniform(0.8, 3.0)
    path = trajectory(rng, spec.motion, frames, size, speed)
    contrast = rng.uniform(0.9 - 0.6 * difficulty, 1.0)
    radius = rng.uniform(0.12, 0.18) * size * object_scale
    colour = rng.uniform(0, 1, 3)
    if colour_cue:
        colour = (1.0 - colour_cue) * colour + colour_cue * class_colour
    draw_object(video, (spec.shape, spec.motion, spec.texture), path, radius, colour,
                np.ones(frames, dtype=bool), contrast, rng.uniform(-1.5, 1.5))
    video += rng.normal(0, 0.02 + 0.08 * difficulty, size=video.shape)
    meta = {"distractors": distractors, "speed": round(float(speed), 3), "contrast": round(float(contrast), 3),
            "radius": round(float(radius), 2)}
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8), meta


# ----------------------------------------------------------------------------- writing

def encode(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, rate: int) -> None:
    """H.264 (single thread, bit-exact flags) + AAC in .mp4, no timestamps or encoder tags."""
    size = frames.shape[1]
    with tempfile.TemporaryDirectory(prefix="avcorpus-") as tmp:
        wav = Path(tmp) / "audio.wav"
        soundfile.write(str(wav), audio, rate, subtype="PCM_16")
        command = [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-r", str(fps), "-i", "pipe:0",
            "-i", str(wav), "-map", "0:v", "-map", "1:a", "-map_metadata", "-1",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-threads", "1",
            "-x264-params", "threads=1:lookahead-threads=1", "-g", str(fps),
            "-c:a", "aac", "-b:a", "64k", "-ac", "1", "-ar", str(rate),
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
            "-movflags", "+faststart", str(path),
        ]
        result = subprocess.run(command, input=frames.tobytes(), capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg failed for {path}: {result.stderr.decode(errors='replace')[-500:]}")


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def generate(output: Path, sounds: Path = DEFAULT_SOUNDS, classes: int = 8, per_class: dict[str, int] | None = None,
             seed: int = 0, size: int = 64, fps: int = 8, seconds: float = 4.0, rate: int = 16000,
             difficulty: float = 1.0, progress: bool = False, max_distractors: int = 3,
             colour_cue: float = 0.0, object_scale: float = 1.0) -> dict:
    per_class = per_class or {"pretrain": 30, "probe_train": 10, "probe_test": 10}
    if output.exists() and any(output.iterdir()):
        raise SystemExit(f"error: --output {output} exists and is not empty")
    if size % 2 or size < 16:
        raise SystemExit(f"error: --size must be an even number >= 16, got {size}")
    frames, samples = int(round(fps * seconds)), int(round(rate * seconds))
    names = select_classes(sounds, classes)
    specs = class_specs(names)
    colours = class_colours(len(specs))
    pool = [(s, m, t) for s in SHAPES for m in MOTIONS for t in TEXTURES]
    allowed = recordings(sounds, names)
    cache: dict[str, np.ndarray] = {}
    clips, lists = [], {split: [] for split in SPLITS}
    total = sum(per_class[s] for s in SPLITS) * len(specs)
    done = 0
    output.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        index = 0
        for spec, class_colour in zip(specs, colours):
            (output / split / spec.name).mkdir(parents=True, exist_ok=True)
            for k in range(per_class[split]):
                rng = clip_rng(seed, split, index)
                index += 1
                recording = allowed[split][spec.name][int(rng.integers(len(allowed[split][spec.name])))]
                if recording not in cache:
                    cache[recording] = load_sound(sounds / "clips" / recording, rate)
                audio, audio_meta = render_audio(rng, cache[recording], samples, rate, difficulty)
                video, video_meta = render_video(rng, spec, size, frames, pool, difficulty, max_distractors,
                                                 class_colour, colour_cue, object_scale)
                rel = f"{split}/{spec.name}/{spec.name}_{split}_{k:04d}.mp4"
                encode(output / rel, video, audio, fps, rate)
                lists[split].append(rel)
                clips.append({"path": rel, "split": split, "label": spec.name, "recording": recording,
                              **audio_meta, **video_meta})
                done += 1
                if progress and done % 25 == 0:
                    print(f"{done}/{total} clips", file=sys.stderr, flush=True)
    (output / "splits").mkdir(exist_ok=True)
    for split in SPLITS:
        (output / "splits" / f"{split}.txt").write_text("".join(line + "\n" for line in lists[split]))
    corpus = {
        "version": VERSION, "seed": seed, "size": size, "fps": fps, "seconds": seconds, "audio_rate": rate,
        "difficulty": difficulty, **({} if max_distractors == 3 else {"max_distractors": max_distractors}),
        **({"class_colour": colour_cue, "class_colours": colours.round(4).tolist()} if colour_cue else {}),
        **({"object_scale": object_scale} if object_scale != 1.0 else {}),
        "per_class": per_class, "split_folds": {k: list(v) for k, v in SPLIT_FOLDS.items()},
        "classes": [asdict(spec) for spec in specs],
        "recordings": allowed, "clips": clips,
        "sounds_licence": "0 A.D. sound effects, CC-BY-SA-3.0, Wildfire Games (data/sounds/README.md)",
    }
    (output / "corpus.json").write_text(json.dumps(corpus, indent=1, sort_keys=True) + "\n")
    return corpus


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes: equal digests = identical corpora."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="new or empty folder")
    parser.add_argument("--sounds", type=Path, default=DEFAULT_SOUNDS, help="the bundled sound set (folds.csv, clips/)")
    parser.add_argument("--classes", type=int, default=8, help="number of classes, evenly spaced in sorted order")
    parser.add_argument("--pretrain-per-class", type=int, default=30, help="pretraining clips per class")
    parser.add_argument("--probe-train-per-class", type=int, default=10, help="probe training clips per class")
    parser.add_argument("--probe-test-per-class", type=int, default=10, help="probe test clips per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything drawn (same seed, same bytes)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--fps", type=int, default=8, help="video frame rate")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length")
    parser.add_argument("--audio-rate", type=int, default=16000, help="audio sample rate (Hz)")
    parser.add_argument("--difficulty", type=float, default=1.0,
                        help="nuisance in [0, 1] (default 1): contrast of the class object, pixel noise and "
                             "the audio SNR (0-15 dB at 1, 20 dB higher at 0)")
    parser.add_argument("--max-distractors", type=int, default=3, choices=range(4), metavar="{0,1,2,3}",
                        help="render at most this many of each clip's 1-3 distractor objects (default 3: all); "
                             "0 leaves the class object alone in the picture, the easiest video task")
    parser.add_argument("--class-colour", type=float, default=0.0, metavar="CUE",
                        help="in [0, 1] (default 0: colours independent of the class): move the class object's "
                             "random colour this fraction of the way to a colour of its class (1: the colour "
                             "names the class)")
    parser.add_argument("--object-scale", type=float, default=1.0, metavar="SCALE",
                        help="multiply the class object's radius (0.12-0.18 of the frame) by this (default 1)")
    args = parser.parse_args(argv)
    if not 0.25 <= args.object_scale <= 3.0:
        parser.error(f"--object-scale must be in [0.25, 3], got {args.object_scale}")
    if not 0.0 <= args.class_colour <= 1.0:
        parser.error(f"--class-colour must be in [0, 1], got {args.class_colour}")
    if shutil.which("ffmpeg") is None:
        print("error: ffmpeg not found on PATH", file=sys.stderr)
        return 2
    per_class = {"pretrain": args.pretrain_per_class, "probe_train": args.probe_train_per_class,
                 "probe_test": args.probe_test_per_class}
    if min(per_class.values()) < 1:
        print("error: every --*-per-class must be at least 1", file=sys.stderr)
        return 2
    corpus = generate(args.output, args.sounds, args.classes, per_class, args.seed, args.size, args.fps,
                      args.seconds, args.audio_rate, args.difficulty, progress=True,
                      max_distractors=args.max_distractors, colour_cue=args.class_colour,
                      object_scale=args.object_scale)
    counts = {split: sum(1 for c in corpus["clips"] if c["split"] == split) for split in SPLITS}
    print(json.dumps({"output": str(args.output), "classes": [c["name"] for c in corpus["classes"]], **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
