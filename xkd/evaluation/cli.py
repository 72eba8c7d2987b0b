"""Options shared by the ``eval/*.py`` command-line tools, and the steps they share.

Data options: ``--data DIR [DIR ...]`` (shards by make_shards), ``--test-data DIR`` (a separate
official test subset) or ``--splits FORMAT:PATH`` (official split lists, see
:mod:`xkd.evaluation.datasets`), ``--labels CSV`` (override the json labels), ``--split-names``
(evaluate only some splits, e.g. split1 as in the paper's ablations).

Errors: every tool runs its body under :func:`main_guard`, which turns what the user caused
(:data:`INPUT_ERRORS`: an :class:`~xkd.evaluation.errors.EvalInputError` naming the option or
file, an invalid export config, a missing file) into one ``error: ...`` line on stderr and exit
status 2, as argparse does for bad options. Inputs are checked before the expensive steps
(:func:`check_inputs`, :func:`require_modality`), so a wrong option fails in seconds, not after
an hour of feature extraction.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import numpy as np

from xkd.config import ConfigError
from xkd.evaluation.datasets import DatasetError, LabeledDataset, Split, load_dataset, origin_split, read_split_spec
from xkd.evaluation.datasets import require_modality, resolve_splits
from xkd.evaluation.errors import EvalInputError
from xkd.engine.export import encoder_sha256, export_config
from xkd.evaluation.features import FeatureSet, extract_features
from xkd.evaluation.protocol import DEFAULT_TEST_CLIPS, DEFAULT_TRAIN_CLIPS, ENCODER_ROLES, MODALITIES, ClipSpec
from xkd.evaluation.protocol import encoder_name, linear_clip_spec
from xkd.evaluation.results import EvalRecord, publish


# What a user can cause, reported as "error: ..." (exit 2); everything else is a bug and keeps its traceback.
INPUT_ERRORS = (EvalInputError, ConfigError, FileNotFoundError)


def _number(text: str, kind: type, ok, expected: str):
    """An argparse value of ``kind`` for which ``ok(value)`` holds; argparse prints the message."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (clip counts, sizes, epochs, batches)."""
    return _number(text, int, lambda v: v >= 1, "an integer of at least 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (data loading workers)."""
    return _number(text, int, lambda v: v >= 0, "an integer of 0 or more")


def positive_float(text: str) -> float:
    """argparse type: a number > 0 (seconds); NaN fails the comparison."""
    return _number(text, float, lambda v: v > 0, "a positive number")


def add_checkpoint_args(parser: argparse.ArgumentParser, modality: bool = True) -> None:
    group = parser.add_argument_group("checkpoint")
    group.add_argument("--checkpoint", required=True, type=Path,
                       help="export directory of launch/export_encoders.py (<run>/export/<tag>)")
    group.add_argument("--encoder", choices=ENCODER_ROLES, default="teacher",
                       help="which exported encoder (default: teacher, docs/method.md §6)")
    if modality:
        group.add_argument("--modality", choices=MODALITIES, required=True, help="which encoder to evaluate")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", nargs="+", required=True, help="shard directories of the dataset (make_shards.py)")
    group.add_argument("--test-data", nargs="+", default=None,
                       help="shard directories of a separate test subset (instead of --splits)")
    group.add_argument("--splits", default=None,
                       help="official splits: esc50:<meta.csv>, folds:<csv>, ucf101:<dir>, hmdb51:<dir>, "
                            "fsd50k:<dir>, lists:<dir>")
    group.add_argument("--split-names", nargs="+", default=None, help="only these splits (default: all)")
    group.add_argument("--labels", nargs="+", default=None, help="label CSVs overriding the shards' json labels")
    group.add_argument("--dataset-name", default=None, help="name in results (default: the first --data folder)")


def add_clip_args(parser: argparse.ArgumentParser, train_clips: bool = True) -> None:
    group = parser.add_argument_group("clips (docs/method.md §6)")
    group.add_argument("--frames", type=positive_int, default=32, help="video frames per clip at --fps (default 32)")
    group.add_argument("--size", type=positive_int, default=112, help="video clip size in pixels (default 112)")
    group.add_argument("--fps", type=positive_int, default=8, help="video frame rate of the clips (default 8)")
    group.add_argument("--seconds", type=positive_float, default=4.0, help="audio clip seconds (default 4)")
    if train_clips:
        group.add_argument("--train-clips", type=positive_int, default=None,
                           help="augmented clips per training item (default: video 25, audio 10)")
    group.add_argument("--test-clips", type=positive_int, default=DEFAULT_TEST_CLIPS,
                       help="uniformly spaced clips per test item (default 3; FSD50K uses 8)")
    group.add_argument("--seed", type=int, default=0, help="seed of the clip augmentations and the classifier (default 0)")


def add_run_args(parser: argparse.ArgumentParser, features: bool = True) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    if features:
        group.add_argument("--forward-batch-size", type=positive_int, default=64,
                           help="clips per encoder forward pass of the feature extraction (default 64)")
        group.add_argument("--precision", choices=("fp32", "tf32", "bf16", "fp16"), default="fp32",
                           help="feature extraction on a GPU: tf32 (TF32 matmuls, A100/H100), bf16 or fp16 autocast "
                                "(fp16 on V100); fp32 on CPUs")
        group.add_argument("--workers", type=non_negative_int, default=2, help="data loading processes (default 2)")
        group.add_argument("--cache-dir", type=Path, default=None, help="default: <checkpoint>/features")
    group.add_argument("--output", type=Path, default=None,
                       help="result JSON (default: <run>/eval/<protocol>-<dataset>-<modality>-<encoder>.json)")
    group.add_argument("--run", type=Path, default=None,
                       help="pretraining run directory (default: found above --checkpoint via mlflow_run_id)")
    group.add_argument("--tracking-uri", default="", help="MLflow URI (default: MLFLOW_TRACKING_URI or the run's store)")
    group.add_argument("--no-track", action="store_true", help="only write the JSON, no MLflow child runs")
    group.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def load_data(args: argparse.Namespace) -> tuple[LabeledDataset, list[Split]]:
    """The dataset and its splits from the data options."""
    test_dirs = args.test_data or []
    if bool(args.splits) == bool(test_dirs):
        raise DatasetError("give either --splits FORMAT:PATH or --test-data DIR (a separate test subset)")
    dataset = load_dataset([*args.data, *test_dirs], labels=args.labels, name=args.dataset_name)
    if test_dirs:
        splits = [origin_split(dataset, set(range(len(args.data), len(args.data) + len(test_dirs))))]
    else:
        splits = resolve_splits(dataset, read_split_spec(args.splits), args.split_names)
    return dataset, splits


def clip_spec(args: argparse.Namespace, modality: str) -> ClipSpec:
    return linear_clip_spec(modality, frames=args.frames, size=args.size, fps=args.fps, seconds=args.seconds)


def split_items(splits: list[Split]) -> np.ndarray:
    """Every item of the splits (train and test)."""
    return np.unique(np.concatenate([np.concatenate([s.train, s.test]) for s in splits]))


def split_features(args: argparse.Namespace, dataset: LabeledDataset, splits: list[Split], modality: str,
                   train_clips: int | None = None) -> tuple[FeatureSet, FeatureSet]:
    """Augmented training features of every training item and test features of every test item."""
    require_modality(dataset, split_items(splits), modality)
    name = encoder_name(modality, args.encoder)
    spec = clip_spec(args, modality)
    common = dict(seed=args.seed, batch_size=args.forward_batch_size, device=args.device, precision=args.precision,
                  num_workers=args.workers, cache_dir=args.cache_dir, progress=not args.no_progress)
    n_train = train_clips or args.train_clips or DEFAULT_TRAIN_CLIPS[modality]
    train = extract_features(args.checkpoint, name, dataset, spec, mode="train", n_clips=n_train,
                             indices=np.unique(np.concatenate([s.train for s in splits])), **common)
    test = extract_features(args.checkpoint, name, dataset, spec, mode="test", n_clips=args.test_clips,
                            indices=np.unique(np.concatenate([s.test for s in splits])), **common)
    return train, test


def record(args: argparse.Namespace, protocol: str, dataset: LabeledDataset, modality: str, splits: list[dict],
           mean: dict, params: dict) -> EvalRecord:
    names = [encoder_name(m, args.encoder) for m in modality.split("+")]
    sha = ",".join(encoder_sha256(args.checkpoint, n) for n in names)
    return EvalRecord(protocol=protocol, dataset=dataset.name, modality=modality, encoder=args.encoder,
                      checkpoint=str(Path(args.checkpoint).resolve()), checkpoint_sha256=sha, splits=splits,
                      mean=mean, params={"dataset_items": len(dataset), "classes": dataset.num_classes,
                                         "multi_label": dataset.multi_label, **params})


def mean_over_splits(entries: list[dict]) -> dict[str, float]:
    """Each metric averaged over the splits' entries."""
    return {key: float(np.mean([entry["metrics"][key] for entry in entries])) for key in entries[0]["metrics"]}


def finish(args: argparse.Namespace, result: EvalRecord) -> int:
    path = publish(result, args.checkpoint, args.output, args.run, args.tracking_uri, track=not args.no_track)
    print(f"{result.protocol} {result.dataset} {result.modality} ({result.encoder}):")
    for split in result.splits:
        print(f"  {split['split']}: " + ", ".join(f"{k} {v:.2f}" for k, v in split["metrics"].items()))
    print("  mean: " + ", ".join(f"{k} {v:.2f}" for k, v in result.mean.items()))
    print(f"results: {path}")
    return 0


def check_export(checkpoint: Path, names: list[str]) -> None:
    """--checkpoint is an export directory holding config.yaml and the encoders ``names`` (checked
    before any data is read)."""
    what = "an export directory of launch/export_encoders.py, <run>/export/<tag>"
    if not Path(checkpoint).is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such directory (expected {what})")
    missing = [f for f in ("config.yaml", *(f"{n}.safetensors" for n in names)) if not (Path(checkpoint) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"--checkpoint {checkpoint}: missing {', '.join(missing)} (expected {what})")


def check_device(device: str) -> None:
    """--device names a torch device, and a CUDA one only where that CUDA device exists."""
    if device == "auto":
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise EvalInputError(f"--device {device}: not a device (expected auto, cpu, cuda or cuda:N)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            raise EvalInputError(f"--device {device}: this machine has {count} usable CUDA device(s) "
                                 "(use --device cpu, or auto to take a GPU when there is one)")


def check_inputs(args: argparse.Namespace, modalities: list[str]) -> None:
    """The checks every protocol runs first: the export directory and the device."""
    check_export(args.checkpoint, [encoder_name(m, args.encoder) for m in modalities])
    check_device(args.device)


# A DataLoader worker's exception is re-raised in the main process with its type but with the
# worker's whole traceback as the message ("Caught X in DataLoader worker process 0.\nOriginal
# Traceback ..."); the user needs only the last part, the original message.
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def user_message(error: BaseException) -> str:
    """The message of an input error, without a DataLoader worker's traceback."""
    text = str(error)
    if _WORKER.match(text):
        name = re.escape(type(error).__name__)
        last = None
        for last in re.finditer(rf"^(?:[\w.]+\.)?{name}: ", text, re.M):
            pass
        if last is not None:
            return text[last.end():].strip()
    return text


def main_guard(run) -> int:
    """Run a CLI body; turn input errors (:data:`INPUT_ERRORS`) into one ``error: ...`` line on stderr
    and exit status 2. Other exceptions propagate with their traceback: they are bugs to report."""
    try:
        return run()
    except INPUT_ERRORS as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2


def pretrain_views(args: argparse.Namespace):
    return export_config(args.checkpoint).views
