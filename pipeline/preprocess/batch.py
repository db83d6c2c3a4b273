"""Run one stage CLI for many subjects in one process: a dataset's registrations or maskings as
one job instead of one job per subject.

Why: every process that imports ants pays about 3 CPU-seconds for it (scikit-learn, statsmodels,
matplotlib and pandas come along), more than registering a 2 mm subject costs; one process per
dataset pays it once. Each task is the list of the stage CLI's argument lists that belong to one
subject, run in order (the subject, then its partner, which needs the subject's transforms), so
every subject is computed exactly as by its own `python -m <stage> ...` command. Tasks run one
after another, or spread over ``workers`` processes forked after the import (they inherit the
imported modules; registration stays single-threaded and seeded in each, so outputs do not
depend on the number of workers). The first failing command stops the batch: the stage CLI has
already printed its one-line ``error: ...`` naming the file; the batch adds which command failed.

    python -m pipeline.preprocess.batch pipeline.preprocess.register --workers 2 \\
        --tasks '[[["register", "--moving", "a.nii.gz", ...], ["apply", ...]], ...]'
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import multiprocessing
import shlex
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from pipeline.errors import ConfigError, PipelineError

_log = logging.getLogger(__name__)

#: Stage modules a batch may run (each has ``main(argv)``, the CLI of one subject).
STAGES = ("pipeline.preprocess.register", "pipeline.preprocess.mask_headholder")


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


def run_batch(stage: str, tasks: Sequence[Sequence[Sequence[str]]], workers: int = 1) -> None:
    """Run every task's commands of ``stage``; tasks over ``workers`` forked processes."""
    if stage not in STAGES:
        raise ConfigError(f"batch: stage must be one of {STAGES}, got {stage!r}")
    if workers < 1:
        raise ConfigError(f"batch: workers must be >= 1, got {workers}")
    importlib.import_module(stage)  # once, before any fork
    start = time.perf_counter()
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            _run_task(stage, task)
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
            futures = [pool.submit(_run_task, stage, task) for task in tasks]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    _log.info("%s: %d tasks in %.1f s (%d workers)", stage, len(tasks), time.perf_counter() - start, workers)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.preprocess.batch", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=STAGES, help="the stage module whose CLI each command calls")
    parser.add_argument("--tasks", required=True, help="JSON: a list of tasks, each a list of argument lists")
    parser.add_argument("--workers", type=int, default=1, help="processes (forked after the import)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        try:
            tasks = json.loads(args.tasks)
        except ValueError as exc:
            raise ConfigError(f"batch --tasks: not JSON ({exc})") from exc
        if not (isinstance(tasks, list) and all(isinstance(t, list) and all(
                isinstance(a, list) and all(isinstance(x, str) for x in a) for a in t) for t in tasks)):
            raise ConfigError("batch --tasks: expected a list of tasks, each a list of lists of strings")
        run_batch(args.stage, tasks, args.workers)
    except PipelineError as exc:
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
