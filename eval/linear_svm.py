#!/usr/bin/env python
"""Linear SVM evaluation of an exported encoder (docs/method.md §6; paper A.5): UCF101, HMDB51, ESC50.

    python eval/linear_svm.py --checkpoint runs/k400/export/step00100000 --modality video \\
        --data /shards/ucf101 --splits ucf101:/data/ucfTrainTestlist
    python eval/linear_svm.py --checkpoint ... --modality audio --data /shards/esc50 \\
        --labels /data/ESC-50/meta/esc50.csv --splits esc50:/data/ESC-50/meta/esc50.csv

Features (cached, see extract_features.py): --train-clips augmented clips per training item
(video 25, audio 10), --test-clips uniformly spaced clips per test item (3). LinearSVC over
C in {1e-5, ..., 1}, C chosen by cross-validation on the training split (--choose-c-on-test:
the reference code's choice on the test split, optimistic, recorded as such); features
standardised (--no-standardize to turn off). Test score of an item = mean of its clips'
decision functions. Prints and records top-1/top-5 per split and the mean over splits
(JSON + MLflow child runs of the pretraining run).
"""
from __future__ import annotations

import argparse
import sys

from xkd.cli_help import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    from xkd.evaluation import cli
    from xkd.evaluation.svm import C_GRID, SVMConfig, evaluate_split, summarize

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    cli.add_checkpoint_args(parser)
    cli.add_data_args(parser)
    cli.add_clip_args(parser)
    svm = parser.add_argument_group("SVM")
    svm.add_argument("--c-grid", type=float, nargs="+", default=list(C_GRID), help="default: 1e-5 ... 1")
    svm.add_argument("--choose-c-on-test", action="store_true",
                     help="reference-code behaviour: report the best test accuracy over the C grid (optimistic)")
    svm.add_argument("--cv-folds", type=int, default=5, help="folds of the C cross-validation (default 5)")
    svm.add_argument("--no-standardize", action="store_true", help="do not z-score the feature dimensions")
    svm.add_argument("--max-iter", type=int, default=10000, help="iterations of each LinearSVC fit")
    svm.add_argument("--jobs", type=int, default=1, help="parallel SVM fits (default 1)")
    cli.add_run_args(parser)
    args = parser.parse_args(argv)
    cli.setup_logging()

    def run() -> int:
        cli.check_inputs(args, [args.modality])
        config = SVMConfig(c_grid=tuple(args.c_grid), c_selection="test" if args.choose_c_on_test else "cv",
                           cv_folds=args.cv_folds, standardize=not args.no_standardize, max_iter=args.max_iter,
                           n_jobs=args.jobs, seed=args.seed)
        dataset, splits = cli.load_data(args)
        if dataset.multi_label:
            raise cli.DatasetError(f"{dataset.name} is multi-label: use eval/fc_tune.py (mAP)")
        train, test = cli.split_features(args, dataset, splits, args.modality)
        results = []
        for split in splits:
            results.append(evaluate_split(split.name, train.take(dataset, split.train), dataset.targets(split.train),
                                          test.take(dataset, split.test), dataset.targets(split.test),
                                          dataset.num_classes, config))
        entries = [result.entry(split.missing) for result, split in zip(results, splits)]
        params = {"c_grid": list(config.c_grid), "c_selection": config.c_selection, "cv_folds": config.cv_folds,
                  "standardize": config.standardize, "train_clips": train.features.shape[1],
                  "test_clips": test.features.shape[1], "clip": train.identity["clip"], "seed": args.seed}
        return cli.finish(args, cli.record(args, "linear_svm", dataset, args.modality, entries, summarize(results),
                                           params))

    return cli.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
