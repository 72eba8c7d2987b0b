#!/usr/bin/env python
"""Export the random-init (step 0) encoders of a run's config: the baseline every protocol can compare to.

    python eval/random_init.py --like runs/tiny/export/step00000200 --output runs/tiny/export/random_init

The weights are exactly those the pretraining started from (``torch.manual_seed(train.seed)``,
then the model as the trainer builds it), written in the export format of
launch/export_encoders.py, so linear_svm.py & co. take it as --checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xkd.cli_help import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    from xkd.engine.export import export_initial_encoders
    from xkd.evaluation import cli

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--like", required=True, type=Path, help="an export directory (its config.yaml is used)")
    parser.add_argument("--output", required=True, type=Path, help="export directory to write")
    parser.add_argument("--seed", type=int, default=None, help="default: the config's train.seed")
    args = parser.parse_args(argv)

    def run() -> int:
        for name, path in export_initial_encoders(args.like, args.output, args.seed).items():
            print(f"{name}: {path}")
        return 0

    return cli.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
