"""Options shared by the ``eval/*.py`` command-line tools, and the steps they share.

Data options: ``--data DIR [DIR ...]`` (shards by make_shards), ``--test-data DIR`` (a separate
official test subset) or ``--splits FORMAT:PATH`` (official split lists, see
:mod:`xkd.evaluation.datasets`), ``--labels CSV`` (override the json labels), ``--split-names``
(evaluate only some splits, e.g. split1 as in the paper's ablations).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from xkd.evaluation.datasets import DatasetError, LabeledDataset, Split, load_dataset, origin_split, read_split_spec
from xkd.evaluation.datasets import resolve_splits
from xkd.evaluation.features import FeatureSet, checkpoint_hash, export_config, extract_features
from xkd.evaluation.protocol import DEFAULT_TEST_CLIPS, DEFAULT_TRAIN_CLIPS, ENCODER_ROLES, MODALITIES, ClipSpec
from xkd.evaluation.protocol import encoder_name, linear_clip_spec
from xkd.evaluation.results import EvalRecord, publish


def add_checkpoint_args(parser: argparse.ArgumentParser, modality: bool = True) -> None:
    group = parser.add_argument_group("checkpoint")
    group.add_argument("--checkpoint", required=True, type=Path,
                       help="export directory of launch/export_encoders.py (<run>/export/<tag>)")
    group.add_argument("--encoder", choices=ENCODER_ROLES, default="teacher",
                       help="which exported encoder (default: teacher, spec section 6)")
    if modality:
        group.add_argument("--modality", choices=MODALITIES, required=True)


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
    group = parser.add_argument_group("clips (spec section 6)")
    group.add_argument("--frames", type=int, default=32, help="video frames per clip at --fps (default 32)")
    group.add_argument("--size", type=int, default=112, help="video clip size in pixels (default 112)")
    group.add_argument("--fps", type=int, default=8)
    group.add_argument("--seconds", type=float, default=4.0, help="audio clip seconds (default 4)")
    if train_clips:
        group.add_argument("--train-clips", type=int, default=None,
                           help="augmented clips per training item (default: video 25, audio 10)")
    group.add_argument("--test-clips", type=int, default=DEFAULT_TEST_CLIPS,
                       help="uniformly spaced clips per test item (default 3; FSD50K uses 8)")
    group.add_argument("--seed", type=int, default=0)


def add_run_args(parser: argparse.ArgumentParser, features: bool = True) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    if features:
        group.add_argument("--batch-size", type=int, default=64, help="clips per encoder forward pass")
        group.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="feature extraction autocast")
        group.add_argument("--workers", type=int, default=2, help="data loading processes")
        group.add_argument("--cache-dir", type=Path, default=None, help="default: <checkpoint>/features")
    group.add_argument("--output", type=Path, default=None,
                       help="result JSON (default: <run>/eval/<protocol>-<dataset>-<modality>-<encoder>.json)")
    group.add_argument("--run", type=Path, default=None,
                       help="pretraining run directory (default: found above --checkpoint via mlflow_run_id)")
    group.add_argument("--tracking-uri", default="", help="MLflow URI (default: MLFLOW_TRACKING_URI or the run's store)")
    group.add_argument("--no-track", action="store_true", help="only write the JSON, no MLflow child runs")
    group.add_argument("--no-progress", action="store_true")


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


def split_features(args: argparse.Namespace, dataset: LabeledDataset, splits: list[Split], modality: str,
                   train_clips: int | None = None) -> tuple[FeatureSet, FeatureSet]:
    """Augmented training features of every training item and test features of every test item."""
    name = encoder_name(modality, args.encoder)
    spec = clip_spec(args, modality)
    common = dict(seed=args.seed, batch_size=args.batch_size, device=args.device, precision=args.precision,
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
    sha = ",".join(checkpoint_hash(args.checkpoint, n) for n in names)
    return EvalRecord(protocol=protocol, dataset=dataset.name, modality=modality, encoder=args.encoder,
                      checkpoint=str(Path(args.checkpoint).resolve()), checkpoint_sha256=sha, splits=splits,
                      mean=mean, params={"dataset_items": len(dataset), "classes": dataset.num_classes,
                                         "multi_label": dataset.multi_label, **params})


def finish(args: argparse.Namespace, result: EvalRecord) -> int:
    path = publish(result, args.checkpoint, args.output, args.run, args.tracking_uri, track=not args.no_track)
    print(f"{result.protocol} {result.dataset} {result.modality} ({result.encoder}):")
    for split in result.splits:
        print(f"  {split['split']}: " + ", ".join(f"{k} {v:.2f}" for k, v in split["metrics"].items()))
    print("  mean: " + ", ".join(f"{k} {v:.2f}" for k, v in result.mean.items()))
    print(f"results: {path}")
    return 0


def main_guard(run) -> int:
    """Run a CLI body; turn dataset problems into a one-line error and exit status 2."""
    try:
        return run()
    except (DatasetError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def pretrain_views(args: argparse.Namespace):
    return export_config(args.checkpoint).views
