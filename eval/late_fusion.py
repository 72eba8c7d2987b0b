#!/usr/bin/env python
"""Audio-visual late fusion (docs/method.md §6; paper A.5, Table 9): Kinetics-Sound.

    python eval/late_fusion.py --checkpoint runs/k400/export/step00100000 \\
        --data /shards/ks_train --test-data /shards/ks_test

Audio and video features of the same clips (cached, see extract_features.py) are standardised,
scaled per modality to equal variance, concatenated and classified with the linear SVM
protocol (C by cross-validation on the training split); top-1 of the mean clip decision.
"""
from __future__ import annotations

import argparse
import sys

from xkd.cli_help import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    from xkd.evaluation import cli
    from xkd.evaluation.fusion import (
        check_aligned,
        check_both_modalities,
        check_windows,
        fuse,
    )
    from xkd.evaluation.svm import C_GRID, SVMConfig, evaluate_split, summarize

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    cli.add_checkpoint_args(parser, modality=False)
    cli.add_data_args(parser)
    cli.add_clip_args(parser)
    svm = parser.add_argument_group("SVM")
    svm.add_argument("--c-grid", type=float, nargs="+", default=list(C_GRID), help="SVM C values to choose from (default: 1e-5 ... 1)")
    svm.add_argument("--choose-c-on-test", action="store_true", help="reference-code behaviour (optimistic)")
    svm.add_argument("--cv-folds", type=int, default=5, help="folds of the C cross-validation")
    svm.add_argument("--max-iter", type=int, default=10000, help="iterations of each LinearSVC fit")
    svm.add_argument("--jobs", type=int, default=1, help="parallel SVM fits")
    cli.add_run_args(parser)
    args = parser.parse_args(argv)
    cli.setup_logging()

    def run() -> int:
        cli.check_inputs(args, ["audio", "video"])
        check_windows(cli.clip_spec(args, "audio"), cli.clip_spec(args, "video"))
        config = SVMConfig(c_grid=tuple(args.c_grid), c_selection="test" if args.choose_c_on_test else "cv",
                           cv_folds=args.cv_folds, standardize=False, max_iter=args.max_iter, n_jobs=args.jobs,
                           seed=args.seed)
        dataset, splits = cli.load_data(args)
        if dataset.multi_label:
            raise cli.DatasetError(f"{dataset.name} is multi-label: late fusion uses the single-label SVM protocol")
        check_both_modalities(dataset, cli.split_items(splits))
        if args.train_clips is None:
            args.train_clips = 25  # one clip count for both modalities: the clips must pair up
        audio_train, audio_test = cli.split_features(args, dataset, splits, "audio")
        video_train, video_test = cli.split_features(args, dataset, splits, "video")
        check_aligned(audio_train, video_train)
        check_aligned(audio_test, video_test)
        results = []
        for split in splits:
            train_x, test_x = fuse([audio_train.take(dataset, split.train), video_train.take(dataset, split.train)],
                                   [audio_test.take(dataset, split.test), video_test.take(dataset, split.test)])
            results.append(evaluate_split(split.name, train_x, dataset.targets(split.train), test_x,
                                          dataset.targets(split.test), dataset.num_classes, config))
        entries = [result.entry() for result in results]
        params = {"c_grid": list(config.c_grid), "c_selection": config.c_selection,
                  "train_clips": audio_train.features.shape[1], "test_clips": audio_test.features.shape[1]}
        return cli.finish(args, cli.record(args, "late_fusion", dataset, "audio+video", entries, summarize(results),
                                           params))

    return cli.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
