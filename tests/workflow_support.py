"""Shared by the end-to-end tests: a throwaway copy of the repository on the tiny profile,
and helpers to run the real command-line tools (snakemake, dvc) inside it."""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from pipeline.config import deep_merge

BIN = Path(sys.executable).parent
TARGET = "results/cyclegan_ct_mri/metrics.json"
#: Run artefacts at the top of a working tree that the copy leaves behind.
TOP_LEVEL_ARTEFACTS = {
    ".venv", ".git", "data", "models", "logs", ".snakemake", "mlflow.db", "mlflow.db.lock",
    "mlartifacts", "mlruns", ".pytest_cache", "report.html", "dvc-remote", "benchmarks", "test-artifacts",
}


def copy_ignore(root: Path):
    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(directory) == root:
            skip |= TOP_LEVEL_ARTEFACTS & set(names)
        if Path(directory) == root / "results":
            skip |= {n for n in names if n != "README.md"}
        return skip

    return ignore


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def dvc_stage_targets(workdir: Path) -> list[str]:
    """The Snakemake targets of every dvc.yaml stage: the files its command (the last
    `snakemake ...` of the stage's `cmd`) asks Snakemake to build, in stage order."""
    stages = yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"]
    targets: list[str] = []
    for name, stage in stages.items():
        words = shlex.split(stage["cmd"].split("&&")[-1])
        assert words[0] == "snakemake", f"dvc.yaml stage {name}: its command is not a snakemake call"
        for word in words[1:]:
            if word.startswith("-"):
                break
            if word not in targets:
                targets.append(word)
    return targets


def build_dvc_stages(workdir: Path, cores: int = 2) -> None:
    """What `dvc repro` builds, in one Snakemake run instead of one per stage: every stage's
    targets at once (so the experiments' chains share the cores), then `dvc commit` so that
    dvc.lock records each stage's deps, params and outs and `dvc status` is clean. The stage
    commands themselves are run by test_workflow's `dvc repro` of a stage.

    `dvc commit` copies each cached out back into place (the cache type here is copy), which
    gives model.pt a newer mtime than the evaluation figures written from it; the stages' own
    commands start with `snakemake --touch` for that reason, and so does this build after it."""
    targets = dvc_stage_targets(workdir)
    run(["snakemake", "--cores", str(cores), "--", *targets], workdir)
    run(["dvc", "commit", "--force", "--quiet"], workdir)
    run(["snakemake", "--touch", "--cores", str(cores), "--quiet", "rules", "--", *targets], workdir)


def planned_jobs(workdir: Path, target: str = TARGET) -> dict[str, int]:
    """Rule -> job count that `snakemake -n` would run (empty when nothing to do)."""
    out = run(["snakemake", "-n", "--cores", "2", target], workdir).stdout
    jobs: dict[str, int] = {}
    in_table = False
    for line in out.splitlines():
        if line.startswith("Job stats:"):
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if match and match.group(1) != "total":
                jobs[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return jobs


@contextlib.contextmanager
def changed_param(workdir: Path, dotted: str, value):
    """params.yaml with one value changed, restored byte for byte afterwards."""
    path = workdir / "params.yaml"
    original = path.read_text()
    cfg = yaml.safe_load(original)
    node = cfg
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    assert last in node, f"{dotted} is not in params.yaml"
    node[last] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(original)


def tiny_copy(repo_root: Path, work: Path, overrides: dict | None = None, git: bool = True) -> Path:
    """Copy the repository to ``work`` with configs/tiny.yaml (and ``overrides``) merged into
    params.yaml, as its own git repository so DVC and the MLflow git tags work."""
    shutil.copytree(repo_root, work, ignore=copy_ignore(repo_root))
    params = yaml.safe_load((work / "params.yaml").read_text())
    tiny = yaml.safe_load((work / "configs" / "tiny.yaml").read_text())
    merged = deep_merge(deep_merge(params, tiny), overrides or {})
    (work / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    if git:
        run(["git", "init", "-q"], work)
        run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], work)
        run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], work)
    return work


def numbers(node):
    """Every number in a metrics.json tree (nested dicts and lists), booleans left out."""
    if isinstance(node, dict):
        for value in node.values():
            yield from numbers(value)
    elif isinstance(node, list):
        for value in node:
            yield from numbers(value)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node


def experiment_runs(workdir: Path, experiment: str, columns: str = "r.run_uuid, r.status") -> list[tuple]:
    """``columns`` of each run of ``experiment`` in the repository's MLflow store (mlflow.db)."""
    db = sqlite3.connect(workdir / "mlflow.db")
    query = f"SELECT {columns} FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id"
    return db.execute(f"{query} WHERE e.name = ?", (experiment,)).fetchall()


def split_arrays(slices: Path) -> list[dict[str, np.ndarray]]:
    """train, val and test of a slices folder, each its npz's arrays."""
    splits = []
    for split in ("train", "val", "test"):
        with np.load(slices / f"{split}.npz") as data:
            splits.append(dict(data))
    return splits


def patients_apart(splits: list[dict[str, np.ndarray]]) -> list[set[str]]:
    """Each split's patients (``subject_ids``), asserting no patient is in two splits."""
    patients = [set(map(str, data["subject_ids"])) for data in splits]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    return patients


def assert_reruns(
    workdir: Path, target: str, job: str, own_knob: tuple[str, object], source_knob: tuple[str, object]
) -> None:
    """A built ``target`` reruns nothing; a knob of its own stage reruns ``job`` only; a knob of
    its phantom source reruns the download too."""
    assert planned_jobs(workdir, target) == {}
    with changed_param(workdir, *own_knob):
        assert planned_jobs(workdir, target) == {job: 1}
    with changed_param(workdir, *source_knob):
        assert planned_jobs(workdir, target) == {"download": 1, job: 1}
