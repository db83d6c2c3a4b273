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
finished subject. With a resume folder (beside the output, not in it), each task's outputs (the
stage's ``resume_outputs``) are hard-linked there once all its commands have succeeded, under a
key hashed from this module's and the stage module's source, the stage's library versions
(``resume_versions``), the task's arguments and the contents of every file it reads
(``resume_inputs``); the next run restores a task with the same key instead of running it, drops
entries no task can use, and a batch that succeeds removes the folder. A changed input, knob,
seed, library version or stage module changes the key and the task runs again; code the stage
imports from elsewhere (file writing, argument parsing) is not in the key: after changing it, or
to force a re-registration, delete ``data/.resume``. The restored files are the kept ones
themselves (registration is bit-identical run to run anyway).
"""

from __future__ import annotations

import errno
import functools
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from pipeline.atomic import flush_file_system
from pipeline.errors import ConfigError, PipelineError
from pipeline.preprocess import run_cli, stage_parser

_log = logging.getLogger(__name__)

#: Stage modules a batch may run (each has ``main(argv)``, the CLI of one subject).
STAGES = ("pipeline.preprocess.window", "pipeline.preprocess.register", "pipeline.preprocess.mask_headholder")


class BatchCommandFailed(PipelineError):
    """One subject's command exited non-zero (its own error line is already in the log)."""


@functools.cache
def _code_digest(stage: str) -> bytes:
    """This module's and the stage module's source and the stage's library versions, once per run."""
    module = importlib.import_module(stage)
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(Path(inspect.getsourcefile(module)).read_bytes())
    digest.update(module.resume_versions().encode())
    return digest.digest()


@functools.cache
def _content_digest(path: str, mtime_ns: int, size: int) -> bytes:
    """A file's content digest, once per run (every subject's key reads the same reference volume)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def _file_digests(path: Path) -> Iterator[bytes]:
    """Name and content digests of a file, or of every file under a folder (sorted)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        stat = file.stat()
        yield str(file).encode() + b"\0" + _content_digest(str(file), stat.st_mtime_ns, stat.st_size)


def _task_key(module, task: Sequence[Sequence[str]]) -> str | None:
    """Hash of this module's and the stage's source, the stage's library versions
    (``resume_versions``), the task's arguments and the contents of every file it reads
    (``resume_inputs``); None when the task is not resumable or an input cannot be read (it then
    runs, and reports a bad input as usual)."""
    digest = hashlib.sha256(_code_digest(module.__name__))
    digest.update(json.dumps(task).encode())
    try:
        module.resume_outputs(task)  # raises for a command the stage cannot resume
        for path in module.resume_inputs(task):
            for chunk in _file_digests(Path(path)):
                digest.update(chunk)
    except (OSError, PipelineError):
        return None
    return digest.hexdigest()[:32]


def _link_tree(source: Path, target: Path) -> None:
    """``source`` (a file or a folder) at ``target`` as hard links, copies where links fail."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                raise
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link)
    else:
        link(str(source), str(target))


def _restore(module, task: Sequence[Sequence[str]], kept: Path) -> bool:
    """Put a kept result of ``task`` (``kept``, written by :func:`_keep`) back in place; False when
    there is none or it does not name the same outputs (the task then runs)."""
    try:
        record = json.loads((kept / "complete").read_text())
    except (OSError, ValueError):
        return False
    outputs = [str(p) for p in module.resume_outputs(task)]
    if not isinstance(record, dict) or record.get("outputs") != outputs:
        return False
    for index, out in enumerate(map(Path, outputs)):
        if out.is_dir():
            shutil.rmtree(out)
        out.unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        _link_tree(kept / str(index), out)
    _log.info("restored from an interrupted run (%s): %s", kept, ", ".join(outputs))
    return True


def _keep(module, task: Sequence[Sequence[str]], resume_dir: Path, key: str) -> None:
    """Hard-link a finished task's outputs into ``resume_dir``/``key``, made durable and then
    renamed into place, so that an entry is complete or absent."""
    partial_dir = resume_dir / f".{key}-{os.getpid()}"
    shutil.rmtree(partial_dir, ignore_errors=True)
    partial_dir.mkdir(parents=True)
    outputs = [str(p) for p in module.resume_outputs(task)]
    for index, out in enumerate(outputs):
        _link_tree(Path(out), partial_dir / str(index))
    (partial_dir / "complete").write_text(json.dumps({"outputs": outputs, "task": task}))
    flush_file_system(partial_dir)  # the stage writes some outputs without fsync (atomic_dir flush=False)
    shutil.rmtree(resume_dir / key, ignore_errors=True)
    os.replace(partial_dir, resume_dir / key)


def _run_task(
    stage: str, task: Sequence[Sequence[str]], resume_dir: Path | None = None, key: str | None = None
) -> None:
    """Run one task's commands, or restore its kept result from ``resume_dir``/``key``. Keeping
    or restoring that fails (a full disk, a damaged entry) only costs the shortcut: the entry is
    dropped with a warning and the task runs as without a resume folder."""
    module = importlib.import_module(stage)
    if key:
        try:
            if _restore(module, task, resume_dir / key):
                return
        except OSError as exc:
            _log.warning("could not restore %s (%s): running the task again", resume_dir / key, exc)
            shutil.rmtree(resume_dir / key, ignore_errors=True)
    _run_commands(module.main, stage, task)
    if key:
        try:
            _keep(module, task, resume_dir, key)
        except OSError as exc:
            _log.warning("could not keep %s for a later run (%s)", resume_dir / key, exc)
            shutil.rmtree(resume_dir / f".{key}-{os.getpid()}", ignore_errors=True)


def _prune(resume_dir: Path, keys: Sequence[str | None]) -> None:
    """Drop kept entries that no current task can use (old knobs, inputs or code; partial ones)."""
    if not resume_dir.is_dir():
        return
    for entry in resume_dir.iterdir():
        if entry.name not in keys:
            shutil.rmtree(entry, ignore_errors=True)


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
    keys: list[str | None] = [None] * len(tasks)
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        if not all(hasattr(module, name) for name in ("resume_outputs", "resume_inputs", "resume_versions")):
            raise ConfigError(f"batch --resume-dir: {stage} does not declare its outputs and inputs")
        _content_digest.cache_clear()  # digests are reused within one run only
        keys = [_task_key(module, task) for task in tasks]
        _prune(resume_dir, keys)
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
        for task, key in zip(tasks, keys):
            collect(partial(_run_task, stage, task, resume_dir, key))
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
            futures = [pool.submit(_run_task, stage, task, resume_dir, key) for task, key in zip(tasks, keys)]
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
