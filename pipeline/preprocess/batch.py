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

``--resume-dir``: what a killed or failed batch had finished is not lost. Snakemake removes a
failed job's output folder, which for registration at 1 mm (minutes a subject) threw away every
finished subject. With a resume folder (beside the output, not in it), each task's outputs are
hard-linked there once the task has succeeded, under a key hashed from the stage's source, the
task's arguments and the contents of every file it reads (the stage's ``resume_inputs``); the next
run restores a task with the same key instead of running it, and a batch that succeeds removes
the folder. A changed input, knob or stage code changes the key and the task runs again. The
restored files are the kept ones themselves (registration is bit-identical run to run anyway).
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import inspect
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from pipeline.errors import ConfigError, PipelineError
from pipeline.preprocess import run_cli, stage_parser

_log = logging.getLogger(__name__)

#: Stage modules a batch may run (each has ``main(argv)``, the CLI of one subject).
STAGES = ("pipeline.preprocess.window", "pipeline.preprocess.register", "pipeline.preprocess.mask_headholder")


class BatchCommandFailed(PipelineError):
    """One subject's command exited non-zero (its own error line is already in the log)."""


def _task_outputs(module, task: Sequence[Sequence[str]]) -> list[Path]:
    """The task's output paths: the values of the stage's ``RESUMABLE_OUTPUT_FLAGS``."""
    flags = module.RESUMABLE_OUTPUT_FLAGS
    return [Path(value) for argv in task for flag, value in zip(argv, argv[1:]) if flag in flags]


def _task_key(module, task: Sequence[Sequence[str]]) -> str | None:
    """Hash of the stage's source, the task's arguments and the contents of the files it reads;
    None when an input cannot be read (the task then runs and reports it as usual)."""
    digest = hashlib.sha256(Path(inspect.getsourcefile(module)).read_bytes())
    digest.update(json.dumps(task).encode())
    try:
        for path in module.resume_inputs(task):
            digest.update(str(path).encode() + b"\0")
            with open(path, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
    except (OSError, PipelineError):
        return None
    return digest.hexdigest()[:32]


def _link_tree(source: Path, target: Path) -> None:
    """``source`` (a file or a folder) at ``target`` as hard links, copies across file systems."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link)
    else:
        link(str(source), str(target))


def _restore(module, task: Sequence[Sequence[str]], kept: Path) -> bool:
    """Put a kept result of ``task`` (``kept``, a folder written by :func:`_keep`) back in place;
    False when there is none."""
    if not (kept / "complete").is_file():
        return False
    outputs = _task_outputs(module, task)
    for index, out in enumerate(outputs):
        if out.is_dir():
            shutil.rmtree(out)
        out.unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        _link_tree(kept / str(index), out)
    _log.info("restored from an interrupted run (%s): %s", kept, ", ".join(map(str, outputs)))
    return True


def _keep(module, task: Sequence[Sequence[str]], resume_dir: Path, key: str) -> None:
    """Hard-link a finished task's outputs into ``resume_dir``/``key`` (complete only once all are)."""
    partial_dir = resume_dir / f".{key}-{os.getpid()}"
    shutil.rmtree(partial_dir, ignore_errors=True)
    partial_dir.mkdir(parents=True)
    for index, out in enumerate(_task_outputs(module, task)):
        _link_tree(out, partial_dir / str(index))
    (partial_dir / "complete").write_text(json.dumps(task))
    shutil.rmtree(resume_dir / key, ignore_errors=True)
    os.replace(partial_dir, resume_dir / key)


def _run_task(stage: str, task: Sequence[Sequence[str]], resume_dir: Path | None = None) -> None:
    module = importlib.import_module(stage)
    key = _task_key(module, task) if resume_dir is not None else None
    if key and _restore(module, task, resume_dir / key):
        return
    _run_commands(module.main, stage, task)
    if key:
        _keep(module, task, resume_dir, key)


def _run_commands(main: Callable[[list[str]], None], stage: str, task: Sequence[Sequence[str]]) -> None:
    for argv in task:
        try:
            main(list(argv))
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise BatchCommandFailed(
                    f"python -m {stage} {shlex.join(argv)} exited with {exc.code}"
                ) from None
        except Exception as exc:  # not a bad input the CLI reports itself: name the command it broke
            raise BatchCommandFailed(
                f"python -m {stage} {shlex.join(argv)} raised {type(exc).__name__}: {exc}"
            ) from exc


def run_batch(
    stage: str,
    tasks: Sequence[Sequence[Sequence[str]]],
    workers: int = 1,
    keep_going: bool = False,
    resume_dir: str | Path | None = None,
) -> None:
    """Run every task's commands of ``stage``; tasks over ``workers`` forked processes. The first
    failure stops the batch, or with ``keep_going`` is collected and raised after the others.
    ``resume_dir``: keep each finished task's outputs there and restore them on the next run (see
    the module docstring); removed when the whole batch succeeds."""
    if stage not in STAGES:
        raise ConfigError(f"batch: stage must be one of {STAGES}, got {stage!r}")
    if workers < 1:
        raise ConfigError(f"batch: workers must be >= 1, got {workers}")
    module = importlib.import_module(stage)  # once, before any fork
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        if not all(hasattr(module, name) for name in ("RESUMABLE_OUTPUT_FLAGS", "resume_inputs")):
            raise ConfigError(f"batch --resume-dir: {stage} does not declare its outputs and inputs")
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
            collect(partial(_run_task, stage, task, resume_dir))
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
            futures = [pool.submit(_run_task, stage, task, resume_dir) for task in tasks]
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
    if resume_dir is not None:
        shutil.rmtree(resume_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("pipeline.preprocess.batch", __doc__)
    parser.add_argument("stage", choices=STAGES, help="the stage module whose CLI each command calls")
    parser.add_argument("--tasks", required=True, help="JSON: a list of tasks, each a list of argument lists")
    parser.add_argument("--workers", type=int, default=1, help="processes (forked after the import)")
    parser.add_argument(
        "--keep-going", action="store_true", help="run every task, then fail naming each failed one"
    )
    parser.add_argument(
        "--resume-dir", type=Path, default=None,
        help="keep finished tasks' outputs here; a rerun restores them (removed once the batch succeeds)",
    )
    run_cli(
        parser,
        lambda args: run_batch(
            args["stage"], _tasks(args["tasks"]), args["workers"], args["keep_going"], args["resume_dir"]
        ),
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
