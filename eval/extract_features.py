#!/usr/bin/env python
"""Extract (and cache) frozen features of an exported encoder on a labelled shard set (docs/method.md §6).

    python eval/extract_features.py --checkpoint runs/k400/export/step00100000 --modality video \\
        --data /shards/ucf101 --mode both
    python eval/extract_features.py --checkpoint ... --modality audio --encoder student --data /shards/esc50

Feature = mean of the last-layer patch tokens of the teacher encoder (--encoder student for the
student). Test features: --test-clips uniformly spaced clips per item, no augmentation; train
features: --train-clips random clips with the linear-eval augmentation. Written to
<checkpoint>/features/ (or --cache-dir) under a hash of the checkpoint, data and settings; the
protocols (linear_svm.py, fc_tune.py, late_fusion.py) reuse them without another forward pass.
"""
from __future__ import annotations

import argparse
import sys

from xkd.cli_help import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from xkd.evaluation import cli
    from xkd.evaluation.datasets import load_dataset, require_modality
    from xkd.evaluation.features import extract_features
    from xkd.evaluation.protocol import DEFAULT_TRAIN_CLIPS, encoder_name

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    cli.add_checkpoint_args(parser)
    parser.add_argument("--data", nargs="+", required=True, help="shard directories (make_shards.py)")
    parser.add_argument("--labels", nargs="+", default=None, help="label CSVs overriding the json labels")
    parser.add_argument("--dataset-name", default=None, help="name in the cache files (default: the --data folder's)")
    parser.add_argument("--mode", choices=("test", "train", "both"), default="both",
                        help="test: uniform clips; train: augmented clips; both")
    cli.add_clip_args(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    group.add_argument("--forward-batch-size", type=cli.positive_int, default=64, help="clips per encoder forward pass")
    group.add_argument("--precision", choices=("fp32", "tf32", "bf16", "fp16"), default="fp32",
                       help="forward pass on a GPU: tf32 (TF32 matmuls, A100/H100), bf16 or fp16 autocast (fp16 on "
                            "V100); fp32 on CPUs")
    group.add_argument("--workers", type=cli.non_negative_int, default=2, help="data loading processes")
    group.add_argument("--cache-dir", default=None, help="where the features go (default: <checkpoint>/features)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cli.setup_logging()

    def run() -> int:
        cli.check_inputs(args, [args.modality])
        dataset = load_dataset(args.data, labels=args.labels, name=args.dataset_name)
        require_modality(dataset, np.arange(len(dataset)), args.modality)
        spec = cli.clip_spec(args, args.modality)
        modes = ("test", "train") if args.mode == "both" else (args.mode,)
        for mode in modes:
            clips = args.test_clips if mode == "test" else (args.train_clips or DEFAULT_TRAIN_CLIPS[args.modality])
            features = extract_features(args.checkpoint, encoder_name(args.modality, args.encoder), dataset, spec,
                                        mode=mode, n_clips=clips, seed=args.seed, batch_size=args.forward_batch_size,
                                        device=args.device, precision=args.precision, num_workers=args.workers,
                                        cache_dir=args.cache_dir, progress=not args.no_progress)
            state = "cached" if features.from_cache else f"computed ({features.forward_batches} batches)"
            print(f"{mode}: {features.features.shape} {state}: {features.path}")
        return 0

    return cli.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
