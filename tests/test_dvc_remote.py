"""DVC's default remote and a fresh clone: `dvc push` from a built tree, `git clone`, then
`python -m pipeline.restore` (dvc pull + check + snakemake --touch) and `snakemake -n` plans nothing,
while a real change still reruns what depends on it.

Reuses the session's built tiny chain (conftest.built_tiny_repo); the clone lives beside it, so
both find the committed default remote `../medgan-dvc-remote` without any configuration.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.restore import restore
from workflow_support import TARGET, changed_param, planned_jobs, run

pytestmark = pytest.mark.slow
GIT_USER = ["-c", "user.name=t", "-c", "user.email=t@t"]


@pytest.fixture(scope="module")
def pushed(built_tiny_repo: Path) -> Path:
    """The built tree after the user's usual closing steps: commit dvc.lock, `dvc push`."""
    run(["git", *GIT_USER, "add", "dvc.lock"], built_tiny_repo)
    run(["git", *GIT_USER, "commit", "-qm", "built the tiny chain"], built_tiny_repo)
    run(["dvc", "push", "--quiet"], built_tiny_repo)
    return built_tiny_repo


@pytest.fixture(scope="module")
def clone(pushed: Path) -> dict:
    """A fresh clone: first a plain `dvc pull` (what Snakemake then plans), then the restore."""
    work = pushed.parent / "clone"
    run(["git", "clone", "-q", str(pushed), str(work)], pushed.parent)
    run(["dvc", "pull", "--quiet"], work)
    after_plain_pull = planned_jobs(work)
    run([sys.executable, "-m", "pipeline.restore", "--cores", "2"], work)
    return {"path": work, "after_plain_pull": after_plain_pull}


def test_default_remote_is_a_folder_beside_the_repository(pushed: Path):
    remote = pushed.parent / "medgan-dvc-remote"
    assert "local" in run(["dvc", "remote", "default"], pushed).stdout
    stored = [p for p in (remote / "files" / "md5").rglob("*") if p.is_file()]
    assert len(stored) > 20, "dvc push stored the data, models and results"


def test_plain_pull_loses_mtimes_and_snakemake_would_rerun(clone: dict):
    assert (clone["path"] / TARGET).is_file()
    assert clone["after_plain_pull"], "the restore step is needed only because this is not empty"


def test_restore_on_a_fresh_clone_leaves_nothing_to_do(clone: dict):
    work = clone["path"]
    assert planned_jobs(work) == {}
    assert "up to date" in run(["dvc", "status"], work).stdout


def test_a_real_change_after_restore_still_reruns(clone: dict):
    work = clone["path"]
    with changed_param(work, "experiments.cyclegan_ct_mri.model.lr_g", 3.0e-4):
        assert set(planned_jobs(work)) == {"train", "evaluate"}
        with pytest.raises(PipelineError, match="train_cyclegan_ct_mri.*dvc repro"):
            restore(work, pull=False)  # stale for these params: never touched into "up to date"
    # New content in an input (a bare touch is not enough: Snakemake compares small inputs' checksums).
    slices = work / "data" / "slices" / "mri_t2" / "val.npz"
    with np.load(slices) as npz:
        arrays = dict(npz)
    arrays["images"] = arrays["images"][::-1].copy()
    with open(slices, "wb") as handle:
        np.savez(handle, **arrays)
    jobs = planned_jobs(work)
    assert {"train", "evaluate"} <= set(jobs) and not {"window", "register", "extract_slices"} & set(jobs), jobs
