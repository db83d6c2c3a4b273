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
# Under pytest-xdist (`make test`: -n 2) the workers share the cores: each gets its share of
# threads instead of all of them (oversubscribed OpenMP threads wait on each other). Snakemake
# jobs still get their rule's threads (Snakemake sets OMP_NUM_THREADS per job).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

#: Session-wide builds -> the xdist group of every test module that uses one (one worker builds it once).
SHARED_BUILD_GROUPS = {"built_tiny_repo": "tiny_build"}
#: Groups started first, longest first, so that the long chains overlap the many short tests.
FIRST_GROUPS = ("tiny_build", "phi_build")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Work units for `pytest -n N --dist loadgroup`: a test module is one unit (its module
    fixtures are built once), modules sharing a session build are one unit (``xdist_group`` mark,
    e.g. every user of built_tiny_repo; test_phi and test_snakemake_restart mark themselves
    ``phi_build``), and on xdist workers the long units come first (with --no-loadscope-reorder)."""
    module_group = {}
    for item in items:
        for fixture, group in SHARED_BUILD_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                module_group[item.path] = group
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(module_group.get(item.path, item.path.relative_to(REPO).as_posix())))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        group_of = {item: item.get_closest_marker("xdist_group").args[0] for item in items}
        slow_groups = {group_of[item] for item in items if item.get_closest_marker("slow")}

        def rank(item) -> int:
            group = group_of[item]
            if group in FIRST_GROUPS:
                return FIRST_GROUPS.index(group)
            return len(FIRST_GROUPS) + (0 if group in slow_groups else 1)

        items.sort(key=rank)  # stable: collection order within a rank


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


_TINY_BUILD_FAILURE: list[str] = []


@pytest.fixture(scope="session")
def built_tiny_repo(tmp_path_factory, repo_root) -> Path:
    """A copy of the repository on configs/tiny.yaml (its own git repository) with every
    experiment's chain built from empty data: dvc.yaml's stages, in one Snakemake run, then
    `dvc commit` (workflow_support.build_dvc_stages). Built once per session and shared by the
    end-to-end tests (each experiment's test_workflow_*.py, DVC, report, Slurm), so no chain is
    built twice; each must leave its outputs, params and metadata as it found them. A failed
    build fails every user at once instead of building again. Under pytest-xdist its users
    share one worker (conftest.pytest_collection_modifyitems)."""
    from workflow_support import build_dvc_stages, tiny_copy

    if _TINY_BUILD_FAILURE:
        pytest.fail(_TINY_BUILD_FAILURE[0])
    try:
        work = tiny_copy(repo_root, tmp_path_factory.mktemp("tiny") / "repo")
        build_dvc_stages(work)
    except AssertionError as err:
        _TINY_BUILD_FAILURE.append(str(err))
        raise
    return work
