"""Compare MLflow runs in the terminal: the params and metrics that differ, as one table.

    python -m pipeline.compare_runs cyclegan_ct_mri            # the last 2 runs of an experiment
    python -m pipeline.compare_runs cyclegan_ct_mri --last 5
    python -m pipeline.compare_runs --runs RUN_ID RUN_ID       # two given runs

For people without a browser; the MLflow UI's compare view shows the same with plots.
Reads the store only (no run is created or changed).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import pandas as pd

from pipeline.errors import PipelineError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: Tags worth seeing beside the params: what produced the run.
SHOWN_TAGS = ("git_commit", "git_dirty", "data_version", "params_hash", "device")


def runs_table(tracking_uri: str, experiment: str | None = None, last: int = 2,
               run_ids: Sequence[str] = ()) -> pd.DataFrame:
    """One column per run (newest first), one row per param / tag / final metric."""
    from pipeline import tracking  # noqa: F401  (sets MLflow's offline environment)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if run_ids:
        runs = [client.get_run(run_id) for run_id in run_ids]
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = sorted(e.name for e in client.search_experiments())
            raise PipelineError(f"{tracking_uri}: no experiment {experiment!r}; known: {', '.join(names)}")
        runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=last)
    if len(runs) < 2:
        raise PipelineError(f"{tracking_uri}: need at least two runs to compare, found {len(runs)}")
    columns = {}
    for run in runs:
        values = {f"param {k}": v for k, v in run.data.params.items()}
        values.update({f"tag {k}": run.data.tags[k] for k in SHOWN_TAGS if k in run.data.tags})
        values.update({f"metric {k}": v for k, v in run.data.metrics.items()})
        columns[run.info.run_name or run.info.run_id[:8]] = values
    return pd.DataFrame(columns).sort_index()


def differing(table: pd.DataFrame) -> pd.DataFrame:
    """Rows whose values are not all equal across runs (a missing value counts as different)."""
    as_text = table.astype(str)
    return table[as_text.nunique(axis=1, dropna=False) > 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", help="MLflow experiment (= the target's name)")
    parser.add_argument("--last", type=int, default=2, help="compare the last N runs (default 2)")
    parser.add_argument("--runs", nargs="+", default=(), metavar="RUN_ID", help="compare these runs")
    parser.add_argument("--all", action="store_true", help="show equal rows too")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    args = parser.parse_args(argv)
    if not args.experiment and not args.runs:
        parser.error("name an experiment or give --runs")
    try:
        table = runs_table(args.tracking_uri, args.experiment, args.last, args.runs)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    shown = table if args.all else differing(table)
    if shown.empty:
        print("the runs have the same params and metrics")
    else:
        with pd.option_context("display.max_rows", None, "display.max_colwidth", 40, "display.width", 200):
            print(shown.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
