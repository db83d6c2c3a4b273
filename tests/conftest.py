"""Shared fixtures. Tests build their own small data; nothing binary is checked in."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No test may reach the network or write analytics; MLflow and DVC stay local.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Pseudonymous ids need a salt; tests use a fixed one and never create ~/.config/medgan-workflow/salt.
os.environ.setdefault("MEDGAN_SALT", "test-salt-not-secret-0123456789")
# Downloads and the staging of originals go to the user's cache; tests keep theirs in /tmp.
os.environ.setdefault("MEDGAN_CACHE_DIR", tempfile.mkdtemp(prefix="medgan-test-cache-"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


_TINY_BUILD_FAILURE: list[str] = []


@pytest.fixture(scope="session")
def built_tiny_repo(tmp_path_factory, repo_root) -> Path:
    """A copy of the repository on configs/tiny.yaml (its own git repository) after `dvc repro`:
    every experiment's chain from empty data (dvc.yaml's stages). Built once per session and
    shared by the end-to-end tests (each experiment's test_workflow_*.py, DVC, report, Slurm), so
    no chain is built twice; each must leave its outputs, params and metadata as it found them.
    A failed build fails every user at once instead of building again."""
    from workflow_support import run, tiny_copy

    if _TINY_BUILD_FAILURE:
        pytest.fail(_TINY_BUILD_FAILURE[0])
    try:
        work = tiny_copy(repo_root, tmp_path_factory.mktemp("tiny") / "repo")
        run(["dvc", "repro", "--quiet"], work)
    except AssertionError as err:
        _TINY_BUILD_FAILURE.append(str(err))
        raise
    return work
