#!/usr/bin/env python
"""Final metrics and evaluation scores of selected pretraining runs, as a terminal table (and CSV).

The terminal table has one column per run; the CSV one row per run (for spreadsheets / pandas).

    python scripts/compare_runs.py --experiment tiny                       # every run of an experiment
    python scripts/compare_runs.py --experiment xkd_k400 --filter "tags.variant = 'mas'"
    python scripts/compare_runs.py --run-id 1f2e... --run-id 9a8b... --csv compare.csv
    python scripts/compare_runs.py --experiment tiny --metrics loss,recon_video,kd --metrics-all

The tracking server is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the server of
``scripts/mlflow_server.sh`` (http://127.0.0.1:$XKD_MLFLOW_PORT, port 5000 by default).
Pretraining runs are the runs without a parent; their evaluation child runs (tagged
``xkd.kind=eval``, see ``xkd.tracking.log_eval_run``) contribute the ``eval:`` columns (the
newest child wins when several report the same score).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

DEFAULT_METRICS = ("loss", "ae", "da", "kd", "recon_video", "recon_audio", "samples_seen")
INFO_COLUMNS = ("run", "status", "step")  # the run name holds variant, sizes, dataset and config hash


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    parser.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable)")
    parser.add_argument("--run-id", action="append", default=[], help="run id (repeatable)")
    parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"tags.variant = 'ms'\"")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated training metrics")
    parser.add_argument("--metrics-all", action="store_true", help="every training metric the runs have")
    parser.add_argument("--max-runs", type=int, default=100, help="at most this many runs per experiment")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table to this CSV file")
    return parser.parse_args(argv)


def tracking_uri(arg: str | None) -> str:
    return arg or os.environ.get("MLFLOW_TRACKING_URI") or f"http://127.0.0.1:{os.environ.get('XKD_MLFLOW_PORT', '5000')}"


def select_runs(client: MlflowClient, args: argparse.Namespace) -> tuple[list, list]:
    """(pretraining runs, their experiments' evaluation child runs); --filter narrows --experiment."""
    if not args.experiment and not args.run_id:
        raise SystemExit("error: select runs with --experiment and/or --run-id")
    named = []
    for name in args.experiment:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise SystemExit(f"error: no experiment named {name!r}")
        named.append(experiment.experiment_id)
    parents = {run_id: client.get_run(run_id) for run_id in args.run_id}
    if named:
        for run in client.search_runs(named, args.filter, max_results=args.max_runs * len(named),
                                      order_by=["attributes.start_time ASC"]):
            if "mlflow.parentRunId" not in run.data.tags:
                parents.setdefault(run.info.run_id, run)
    experiments = list(dict.fromkeys(run.info.experiment_id for run in parents.values()))
    children = client.search_runs(experiments, "tags.`xkd.kind` = 'eval'", max_results=10000,
                                  order_by=["attributes.start_time ASC"]) if experiments else []
    return list(parents.values()), children


def eval_scores(run, children) -> dict[str, float]:
    scores = {}
    for child in children:  # oldest first: newer evaluations overwrite older ones
        if child.data.tags.get("mlflow.parentRunId") == run.info.run_id:
            scores.update({f"eval:{k}": v for k, v in child.data.metrics.items()})
    return scores


def last_step(client: MlflowClient, run) -> int | str:
    if "loss" not in run.data.metrics:
        return ""
    history = client.get_metric_history(run.info.run_id, "loss")
    return max(m.step for m in history) if history else ""


def build_rows(client: MlflowClient, parents, children, metrics: list[str], metrics_all: bool) -> tuple[list, list]:
    """Header and rows: run info, final training metrics, evaluation scores."""
    if metrics_all:
        metrics = sorted({k for run in parents for k in run.data.metrics})
    scores = [eval_scores(run, children) for run in parents]
    eval_columns = sorted({k for s in scores for k in s})
    header = [*INFO_COLUMNS, *metrics, *eval_columns]
    rows = []
    for run, score in zip(parents, scores):
        info = [run.info.run_name, run.info.status, last_step(client, run)]
        values = {**run.data.metrics, **score}
        rows.append(info + [values.get(name, "") for name in (*metrics, *eval_columns)])
    return header, rows


def render(header: list[str], rows: list[list], console: Console) -> None:
    """One column per run (runs are few, metrics many): rows are status, step, metrics, eval scores."""
    table = Table(header_style="bold")
    table.add_column("", style="bold", no_wrap=True)
    for row in rows:
        table.add_column(str(row[0]), justify="right", no_wrap=True)
    for i, name in enumerate(header[1:], start=1):
        cells = [f"{row[i]:.4g}" if isinstance(row[i], float) else str(row[i]) for row in rows]
        table.add_row(name, *cells, style="cyan" if name.startswith("eval:") else None)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = MlflowClient(tracking_uri(args.tracking_uri))
    parents, children = select_runs(client, args)
    if not parents:
        print("no runs matched", file=sys.stderr)
        return 1
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    header, rows = build_rows(client, parents, children, metrics, args.metrics_all)
    render(header, rows, Console() if sys.stdout.isatty() else Console(width=200))  # no squeezing in logs
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
