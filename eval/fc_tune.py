#!/usr/bin/env python
"""FC-tuning on frozen features (docs/method.md §6; paper A.5): K400 (top-1/top-5), FSD50K (mAP).

    python eval/fc_tune.py --checkpoint runs/k400/export/step00100000 --modality audio --preset fsd50k \\
        --data /shards/fsd50k_dev --test-data /shards/fsd50k_eval \\
        --labels /data/FSD50K.ground_truth/dev.csv /data/FSD50K.ground_truth/eval.csv --test-clips 8
    python eval/fc_tune.py --checkpoint ... --modality video --preset k400 \\
        --data /shards/k400_train --test-data /shards/k400_val --train-clips 3

One linear layer (after dropout) on the frozen clip features: AdamW, fixed or cosine lr;
cross-entropy and top-1/top-5 for single-label sets, BCE and mAP for multi-label sets.
Presets: fsd50k (lr 1e-3 fixed, wd 1e-5, dropout 0.3, batch 256, 50 epochs), k400 (lr 0.01
cosine, batch 512, 20 epochs); every value can be overridden.
"""
from __future__ import annotations

import argparse
import sys

from xkd.cli_help import HelpFormatter


def main(argv: list[str] | None = None) -> int:

    from xkd.evaluation import cli
    from xkd.evaluation.fc import PRESETS, SCHEDULES, train_fc

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    cli.add_checkpoint_args(parser)
    cli.add_data_args(parser)
    cli.add_clip_args(parser)
    fc = parser.add_argument_group("FC-tuning")
    fc.add_argument("--preset", choices=sorted(PRESETS), default="fsd50k",
                    help="protocol defaults of the dataset (xkd/evaluation/fc.py PRESETS); the flags below override them")
    fc.add_argument("--epochs", type=int, help="training epochs of the FC layer (default: the preset's)")
    fc.add_argument("--batch-size", type=int, help="clip features per optimizer step (default: the preset's)")
    fc.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    fc.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: the preset's)")
    fc.add_argument("--dropout", type=float, help="dropout before the FC layer (default: the preset's)")
    fc.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule after warm-up (default: the preset's)")
    fc.add_argument("--warmup-epochs", type=float, help="linear warm-up from 0 (default: the preset's)")
    fc.add_argument("--standardize", action="store_true", default=None, help="z-score the feature dimensions")
    cli.add_run_args(parser)
    args = parser.parse_args(argv)
    cli.setup_logging()

    def run() -> int:
        cli.check_inputs(args, [args.modality])
        config = PRESETS[args.preset].replace(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                              weight_decay=args.weight_decay, dropout=args.dropout,
                                              schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                                              standardize=args.standardize, seed=args.seed)
        dataset, splits = cli.load_data(args)
        train, test = cli.split_features(args, dataset, splits, args.modality)
        entries = []
        for split in splits:
            result = train_fc(train.take(dataset, split.train), dataset.targets(split.train),
                              test.take(dataset, split.test), dataset.targets(split.test), dataset.num_classes,
                              dataset.multi_label, config, device=args.device)
            entries.append(result.entry(split))
        mean = cli.mean_over_splits(entries)
        params = {"preset": args.preset, **result.config, "train_clips": train.features.shape[1],
                  "test_clips": test.features.shape[1], "clip": train.identity["clip"]}
        return cli.finish(args, cli.record(args, "fc_tune", dataset, args.modality, entries, mean, params))

    return cli.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
