"""MLflow tracking: one run per training, reopened by evaluation so both land together.

The store is ``sqlite:///mlflow.db`` at the repository root by default, or a group's MLflow
server (``http(s)://host:port``, pipeline/tracking_server.py: PostgreSQL behind it, which takes
concurrent writers itself; no lock file then, and MLflow's HTTP client retries failed requests).
For the SQLite default: several Snakemake jobs
may write to that one SQLite file at once, which MLflow alone does not survive (concurrent
first use races on the schema migration; concurrent writes meet "database is locked"). So
every store call here holds an exclusive lock file beside the database, SQLite waits on busy
locks instead of failing at once, and a call that still meets a lock is retried with backoff.
Runs only ever hold arrays-derived numbers, configuration and figures: no DICOM header field.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

from pipeline import hashing
from pipeline.errors import InputDataError

# Set before mlflow is imported: its telemetry client starts at import time.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

# mlflow itself is imported where a store is opened, so the engine's step (and the benchmark,
# which never tracks) runs on a GPU machine that has torch but not mlflow.
if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)
T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Seconds SQLite waits on another writer's lock before reporting "database is locked".
SQLITE_BUSY_TIMEOUT_S = 60
#: Retries of a store call that still failed on a lock, with doubling waits from RETRY_FIRST_WAIT_S.
LOCK_RETRIES = 8
RETRY_FIRST_WAIT_S = 0.2
_TRANSIENT = ("database is locked", "database table is locked", "database is busy")
_BATCH = 100  # MLflow's per-request limit on params and tags


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"model.lr_g": "0.0001", ...}; lists as JSON, so every knob is one param."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def params_hash(params: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``params``: equal knobs, equal hash."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file; an unreadable file is an InputDataError naming it."""
    try:
        return hashing.file_sha256(path)
    except OSError as err:
        raise InputDataError(path, f"cannot be read ({err.strerror})") from err


def data_version(paths: Sequence[Path]) -> str:
    """sha256 over the contents of ``paths``, in order (names and locations do not count)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(file_sha256(Path(path)).encode())
    return digest.hexdigest()


def git_state(repo: Path = REPO_ROOT) -> tuple[str, bool | None]:
    """(commit, dirty) of the code; ("unknown", None) outside git or before the first commit."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, dirty


def _sqlite_path(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])


def _with_busy_timeout(tracking_uri: str) -> str:
    """Make SQLite wait for a busy database rather than fail (pysqlite's ``timeout`` query arg)."""
    if _sqlite_path(tracking_uri) is None or "timeout=" in tracking_uri:
        return tracking_uri
    return f"{tracking_uri}{'&' if '?' in tracking_uri else '?'}timeout={SQLITE_BUSY_TIMEOUT_S}"


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Exclusive lock on ``<db>.lock`` for a SQLite store; nothing for a server store."""
    db = _sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _is_transient(err: Exception) -> bool:
    return any(text in str(err).lower() for text in _TRANSIENT)


class Tracker:
    """One MLflow run, written through the lock-and-retry wrapper. Build with ``start`` or ``reopen``."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._uri = _with_busy_timeout(tracking_uri)
        self.client: mlflow.MlflowClient = self._call(self._open_store)
        self.run_id = ""

    def _open_store(self) -> mlflow.MlflowClient:
        """Client whose first query creates / migrates the schema, under the lock."""
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self._uri)
        client.search_experiments(max_results=1)
        return client

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, run_name: str, resume_run_id: str | None = None) -> "Tracker":
        """Continue ``resume_run_id`` if the store has it (a resumed training), else create a run
        in ``experiment`` (created if needed, artifacts in ``mlartifacts/<experiment>`` beside a
        SQLite database)."""
        tracker = cls(tracking_uri)
        if resume_run_id is not None and tracker._call(lambda: tracker._run_exists(resume_run_id)):
            tracker.run_id = resume_run_id
            tracker._call(lambda: tracker.client.update_run(resume_run_id, status="RUNNING"))
            return tracker
        experiment_id = tracker._call(lambda: tracker._experiment_id(experiment))
        tracker.run_id = tracker._call(lambda: tracker.client.create_run(experiment_id, run_name=run_name)).info.run_id
        return tracker

    @classmethod
    def reopen(cls, tracking_uri: str, run_id: str) -> "Tracker":
        """The existing run ``run_id``; LookupError if the store does not have it."""
        tracker = cls(tracking_uri)
        if not tracker._call(lambda: tracker._run_exists(run_id)):
            raise LookupError(f"run {run_id} is not in the MLflow store {tracking_uri}")
        tracker.run_id = run_id
        tracker._call(lambda: tracker.client.update_run(run_id, status="RUNNING"))
        return tracker

    def _run_exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as err:
            if _is_transient(err):
                raise
            return False
        return True

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        db = _sqlite_path(self.tracking_uri)
        location = None
        if db is not None:
            safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            location = (db.resolve().parent / "mlartifacts" / safe_name).as_uri()
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as err:
            # A server store has no lock file: another job may create the experiment between
            # our lookup and our create (seen with 4 writers on a fresh server). Theirs is ours.
            found = self.client.get_experiment_by_name(name)
            if err.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
                raise
            return found.experiment_id

    def _call(self, action: Callable[[], T]) -> T:
        wait = RETRY_FIRST_WAIT_S
        for attempt in range(LOCK_RETRIES + 1):
            try:
                with _store_lock(self.tracking_uri):
                    return action()
            except Exception as err:  # MLflow wraps SQLAlchemy errors in several types
                if not _is_transient(err) or attempt == LOCK_RETRIES:
                    raise
                log.warning("MLflow store busy (%s); retrying in %.1f s", err, wait)
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` flattened. MLflow forbids changing a logged param, so when a resumed run
        comes back with another value (e.g. more epochs) the new value goes to the tag
        ``param_update.<key>`` instead."""
        from mlflow.entities import Param

        flat = flatten_params(params)
        logged = self._call(lambda: self.client.get_run(self.run_id)).data.params
        items = [Param(key, value) for key, value in flat.items() if key not in logged]
        for start in range(0, len(items), _BATCH):
            self._call(lambda: self.client.log_batch(self.run_id, params=items[start:start + _BATCH]))
        self.set_tags({f"param_update.{key}": value for key, value in flat.items()
                       if key in logged and logged[key] != value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as strings)."""
        from mlflow.entities import RunTag

        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), _BATCH):
            self._call(lambda: self.client.log_batch(self.run_id, tags=items[start:start + _BATCH]))

    def log_metrics(self, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Log the finite values of ``metrics`` at ``step``; None and NaN are left out."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()
                 if value is not None and math.isfinite(float(value))]
        if items:
            self._call(lambda: self.client.log_batch(self.run_id, metrics=items))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run with an MLflow status (FINISHED, FAILED, KILLED)."""
        self._call(lambda: self.client.set_terminated(self.run_id, status=status))


def log_evaluation(run_json: Path, metrics: Mapping[str, float | None], artifacts: Sequence[Path],
                   tracking_uri: str | None = None) -> str:
    """Add evaluation ``metrics`` and ``artifacts`` to the training run named in ``run_json``.

    The run is found by the run_id and tracking URI that training wrote into run.json
    (``tracking_uri`` overrides the latter). None / NaN metrics (e.g. FID without weights) are
    skipped. Returns the run id.
    """
    run_json = Path(run_json)
    try:
        run = json.loads(run_json.read_text())
        run_id, uri = run["run_id"], tracking_uri or run["tracking_uri"]
    except (OSError, ValueError, KeyError) as err:
        raise InputDataError(run_json, f"is not a training run.json with run_id and tracking_uri ({err})") from err
    try:
        tracker = Tracker.reopen(uri, run_id)
    except LookupError as err:
        raise InputDataError(run_json, str(err)) from err
    try:
        tracker.log_metrics(metrics)
        for path in artifacts:
            tracker.log_artifact(Path(path), "evaluation")
    finally:
        tracker.finish("FINISHED")
    return run_id
