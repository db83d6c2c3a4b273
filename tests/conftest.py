"""Shared fixtures. Tests build their own small data; nothing binary is checked in."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
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
# Downloads and the staging of originals go to the user's cache; tests keep theirs in /tmp: one
# folder per session (made by the first process, inherited by xdist's workers), removed when the
# process that made it exits.
if "MEDGAN_CACHE_DIR" not in os.environ:
    os.environ["MEDGAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="medgan-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MEDGAN_CACHE_DIR"], ignore_errors=True)
# Under pytest-xdist (`make test`: -n 2) the workers share the cores: each gets its share of
# threads instead of all of them (oversubscribed OpenMP threads wait on each other). Snakemake
# jobs still get their rule's threads (Snakemake sets OMP_NUM_THREADS per job).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

#: Session builds shared by several test modules (conftest.built_tiny_repo; phi_support's build on
#: marked inputs, used by test_phi and test_snakemake_restart) -> the xdist work unit of the
#: modules that name them, so that one worker builds each once and runs all its users.
SHARED_BUILDS = {"built_tiny_repo": "tiny_build", "uninterrupted_build": "phi_build"}
#: Units started first, longest first, so that the long chains overlap the many short tests.
FIRST_UNITS = ("tiny_build", "phi_build")


@functools.cache
def work_unit(module: str) -> str:
    """The xdist work unit of a test module (its path from the repository root): the shared build
    it names, else the module itself (its module fixtures are then built once)."""
    text = (REPO / module).read_text()
    return next((unit for name, unit in SHARED_BUILDS.items() if name in text), module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`pytest -n N --dist loadscope` (`make test`): xdist's scope scheduling with work_unit as
    the scope. (xdist's own loadgroup marks the group in the test's node id, which pytest 9.2
    no longer lets a plugin change.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedBuildScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid.split("::", 1)[0])

    return SharedBuildScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """On xdist workers, whose collection order is the order units are handed out (with
    --no-loadscope-reorder): the shared builds first, then modules with slow tests, then the rest."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    unit_of = {item: work_unit(item.nodeid.split("::", 1)[0]) for item in items}
    slow_units = {unit_of[item] for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        unit = unit_of[item]
        if unit in FIRST_UNITS:
            return FIRST_UNITS.index(unit)
        return len(FIRST_UNITS) + (0 if unit in slow_units else 1)

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
    share one worker (work_unit)."""
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


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A test module's own MLflow store: a fresh SQLite file (a module may define its own ``store``)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
