#!/usr/bin/env python
"""Print the table of docs/method.md §7 with our numbers beside the paper's.

    python eval/report.py runs/k400/eval                    # every result JSON below a folder
    python eval/report.py runs/*/eval --output report.md

Reads the JSON results written by linear_svm.py, fc_tune.py, finetune.py and late_fusion.py.
One row per (checkpoint, encoder); results on datasets outside the paper's table (e.g. the
bundled sound set) are listed below it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xkd.cli_help import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    from xkd.evaluation import cli
    from xkd.evaluation.report import render
    from xkd.evaluation.results import read_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("results", nargs="+", help="result JSON files or folders holding them")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)

    def run() -> int:
        records = read_results(args.results)
        text = render(records)
        print(text, end="")
        if args.output:
            args.output.write_text(text)
        if not records:
            print(f"(no result files found in {' '.join(args.results)})", file=sys.stderr)
        return 0

    return cli.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
