"""Run one stage CLI for many subjects in one process: a dataset's windowings, registrations or
maskings as one job instead of one job per subject.

Why: every process that imports ants pays about 3 CPU-seconds for it (scikit-learn, statsmodels,
matplotlib and pandas come along), more than registering a 2 mm subject costs; importing the
window stage costs about 0.7 CPU-seconds, several times what windowing a subject at 3 mm costs
(about 0.1), and each Snakemake job adds its own start-up. One process per dataset pays them once. Each task is
the list of the stage CLI's argument lists that belong to one subject, run in order (the subject,
then its partner, which needs the subject's grid or transforms), so
every subject is computed exactly as by its own `python -m <stage> ...` command. Tasks run one
after another, or spread over ``workers`` processes forked after the import (they inherit the
imported modules; registration stays single-threaded and seeded in each, so outputs do not
depend on the number of workers). The first failing command stops the batch: the stage CLI has
already printed its one-line ``error: ...`` naming the file; the batch adds which command failed.
With ``--keep-going`` every other task still runs (a failed task's later commands do not) and
the batch then fails with every failed command named: windowing uses it, so that one run lists
every broken subject of a dataset, as one job per subject with ``snakemake --keep-going`` did.

    python -m pipeline.preprocess.batch pipeline.preprocess.register --workers 2 \\
        --tasks '[[["register", "--moving", "a.nii.gz", ...], ["apply", ...]], ...]'
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import shlex
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial

from pipeline.errors import ConfigError, PipelineError
from pipeline.preprocess import run_cli, stage_parser

_log = logging.getLogger(__name__)

#: Stage modules a batch may run (each has ``main(argv)``, the CLI of one subject).
STAGES = ("pipeline.preprocess.window", "pipeline.preprocess.register", "pipeline.preprocess.mask_headholder")


class BatchCommandFailed(PipelineError):
    """One subject's command exited non-zero (its own error line is already in the log)."""


def _run_task(stage: str, task: Sequence[Sequence[str]]) -> None:
    main = importlib.import_module(stage).main
    for argv in task:
        try:
            main(list(argv))
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise BatchCommandFailed(f"python -m {stage} {shlex.join(argv)} exited with {exc.code}") from None
        except Exception as exc:  # not a bad input the CLI reports itself: name the command it broke
            raise BatchCommandFailed(
                f"python -m {stage} {shlex.join(argv)} raised {type(exc).__name__}: {exc}"
            ) from exc


def run_batch(
    stage: str, tasks: Sequence[Sequence[Sequence[str]]], workers: int = 1, keep_going: bool = False
) -> None:
    """Run every task's commands of ``stage``; tasks over ``workers`` forked processes. The first
    failure stops the batch, or with ``keep_going`` is collected and raised after the others."""
    if stage not in STAGES:
        raise ConfigError(f"batch: stage must be one of {STAGES}, got {stage!r}")
    if workers < 1:
        raise ConfigError(f"batch: workers must be >= 1, got {workers}")
    importlib.import_module(stage)  # once, before any fork
    start = time.perf_counter()
    failures: list[BatchCommandFailed] = []

    def collect(run: Callable[[], None]) -> None:
        try:
            run()
        except BatchCommandFailed as exc:
            if not keep_going:
                raise
            failures.append(exc)

    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            collect(partial(_run_task, stage, task))
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
            futures = [pool.submit(_run_task, stage, task) for task in tasks]
            try:
                for future in futures:
                    collect(future.result)
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    _log.info("%s: %d tasks in %.1f s (%d workers)", stage, len(tasks), time.perf_counter() - start, workers)
    if failures:
        failed = "; ".join(map(str, failures))
        raise BatchCommandFailed(f"{len(failures)} of {len(tasks)} tasks failed: {failed}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("pipeline.preprocess.batch", __doc__)
    parser.add_argument("stage", choices=STAGES, help="the stage module whose CLI each command calls")
    parser.add_argument("--tasks", required=True, help="JSON: a list of tasks, each a list of argument lists")
    parser.add_argument("--workers", type=int, default=1, help="processes (forked after the import)")
    parser.add_argument(
        "--keep-going", action="store_true", help="run every task, then fail naming each failed one"
    )
    run_cli(
        parser,
        lambda args: run_batch(args["stage"], _tasks(args["tasks"]), args["workers"], args["keep_going"]),
        argv,
    )


def _tasks(text: str) -> list[list[list[str]]]:
    """--tasks read and checked: a list of tasks, each a list of argument lists."""
    try:
        tasks = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"batch --tasks: not JSON ({exc})") from exc
    if not (isinstance(tasks, list) and all(isinstance(t, list) and all(
            isinstance(a, list) and all(isinstance(x, str) for x in a) for a in t) for t in tasks)):
        raise ConfigError("batch --tasks: expected a list of tasks, each a list of lists of strings")
    return tasks


if __name__ == "__main__":
    main()
