"""The group's tracking server for real: Debian's PostgreSQL on 127.0.0.1 behind
``python -m pipeline.tracking_server``; the workflow's Tracker logs into it over HTTP from
several processes at once, and what it logged is read back from PostgreSQL's own tables and the
artifact folder on disk (not through MLflow), and through the compare tool.
The whole headline chain logging into such a server through Slurm is tests/test_slurm.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psycopg2
import pytest
from postgres_support import MlflowServer, PostgresServer

from pipeline.compare_runs import runs_table
from pipeline.tracking import Tracker

pytestmark = pytest.mark.slow

EXPERIMENT = "group_server"
#: Writers at once, as jobs on several nodes would be.
N_WRITERS = 4


@pytest.fixture(scope="module")
def postgres():
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory, repo_root):
    artifacts = tmp_path_factory.mktemp("group") / "mlartifacts"
    with MlflowServer(postgres, artifacts, repo_root) as server:
        yield server


def _log_one_run(uri: str, index: int, artifact_dir: str) -> str:
    """A training-like run in its own process: params, a metric curve, an artifact."""
    tracker = Tracker.start(uri, EXPERIMENT, f"writer-{index}")
    tracker.log_params({"model": {"lr_g": 1e-4 * (index + 1)}, "train": {"epochs": 3}})
    tracker.set_tags({"git_commit": "abc123", "params_hash": f"hash{index}"})
    for step in range(3):
        tracker.log_metrics({"G_total": 3.0 - step + index}, step=step)
    artifact = Path(artifact_dir) / f"metrics_{index}.json"
    artifact.write_text(json.dumps({"writer": index}))
    tracker.log_artifact(artifact, "evaluation")
    tracker.finish()
    return tracker.run_id


def test_concurrent_runs_land_in_postgres_and_the_artifact_folder(postgres, mlflow_server, tmp_path):
    with ProcessPoolExecutor(N_WRITERS) as pool:
        run_ids = list(pool.map(_log_one_run, [mlflow_server.uri] * N_WRITERS, range(N_WRITERS),
                                [str(tmp_path)] * N_WRITERS))
    assert len(set(run_ids)) == N_WRITERS

    with psycopg2.connect(postgres.uri) as db, db.cursor() as cur:
        cur.execute("SELECT r.run_uuid, r.status, r.artifact_uri FROM runs r JOIN experiments e "
                    "ON r.experiment_id = e.experiment_id WHERE e.name = %s", (EXPERIMENT,))
        rows = {run_uuid: (status, artifact_uri) for run_uuid, status, artifact_uri in cur.fetchall()}
        assert set(rows) == set(run_ids) and {s for s, _ in rows.values()} == {"FINISHED"}
        for index, run_id in enumerate(run_ids):
            cur.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'model.lr_g'", (run_id,))
            assert float(cur.fetchone()[0]) == pytest.approx(1e-4 * (index + 1))
            cur.execute("SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'G_total' ORDER BY step",
                        (run_id,))
            assert cur.fetchall() == [(0, 3.0 + index), (1, 2.0 + index), (2, 1.0 + index)]
            # Served artifacts: the run records an mlflow-artifacts: URI, the file sits under the server's folder.
            assert rows[run_id][1].startswith("mlflow-artifacts:"), rows[run_id][1]
            stored = list(mlflow_server.artifacts.rglob(f"{run_id}/artifacts/evaluation/metrics_{index}.json"))
            assert len(stored) == 1 and json.loads(stored[0].read_text()) == {"writer": index}


def test_compare_tool_reads_the_server(mlflow_server, tmp_path):
    for index in range(2):
        _log_one_run(mlflow_server.uri, 10 + index, str(tmp_path))
    table = runs_table(mlflow_server.uri, EXPERIMENT, last=2)
    assert list(table.columns) == ["writer-11", "writer-10"]  # newest first
    assert [float(v) for v in table.loc["param model.lr_g"]] == pytest.approx([1.2e-3, 1.1e-3])
    assert list(table.loc["tag params_hash"]) == ["hash11", "hash10"]


def test_wrong_password_is_one_clear_error_without_the_password(postgres, repo_root, tmp_path):
    wrong = postgres.uri.replace(postgres.password, "not-the-password")
    proc = subprocess.run([sys.executable, "-m", "pipeline.tracking_server", "--backend-store-uri", wrong,
                           "--artifacts-destination", str(tmp_path / "a"), "--port", "1"],
                          cwd=repo_root, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cannot connect" in proc.stderr and "127.0.0.1" in proc.stderr
    assert "not-the-password" not in proc.stderr + proc.stdout and "***" in proc.stderr
    assert not (tmp_path / "a").exists()
