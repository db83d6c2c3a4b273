"""End to end: the whole headline chain for real (Snakemake, DVC, MLflow, ANTs) on configs/tiny.yaml.

The repository is copied to a temporary folder with the tiny profile merged into its
params.yaml, so Snakemake and DVC read the same knobs and the developer's tree stays clean.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import deep_merge

BIN = Path(sys.executable).parent
TARGET = "results/cyclegan_ct_mri/metrics.json"
COPY_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "data", "models", "logs", ".snakemake", "mlflow.db", "mlruns", "__pycache__",
    ".pytest_cache", "*.egg-info", "report.html", "dvc-remote",
)


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


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


def set_param(workdir: Path, dotted: str, value) -> None:
    path = workdir / "params.yaml"
    cfg = yaml.safe_load(path.read_text())
    node = cfg
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, repo_root) -> Path:
    work = tmp_path_factory.mktemp("workflow") / "repo"
    shutil.copytree(repo_root, work, ignore=COPY_IGNORE)
    params = yaml.safe_load((work / "params.yaml").read_text())
    tiny = yaml.safe_load((work / "configs" / "tiny.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, tiny), sort_keys=False))
    run(["git", "init", "-q"], work)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], work)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], work)
    run(["dvc", "repro", "--quiet"], work)
    return work


@pytest.mark.slow
def test_dvc_repro_builds_headline_target_and_is_clean(tiny_repo: Path):
    status = run(["dvc", "status"], tiny_repo).stdout
    assert "up to date" in status, status
    metrics = json.loads((tiny_repo / TARGET).read_text())
    for direction in ("ct_to_mri", "mri_to_ct"):
        block = metrics[direction]
        assert 0.0 <= block["ssim"]["mean"] <= 1.0
        assert block["n_source"] > 0 and block["n_target"] > 0
        assert block["fid"]["value"] is None and "Inception weights" in block["fid"]["reason"]
        paired = block["paired"]
        assert paired["n"] >= 1
        for key in ("ssim", "psnr", "mae"):
            assert isinstance(paired[key]["mean"], float)
    assert metrics["mri_to_ct"]["paired"]["mae_hu"]["mean"] >= 0.0
    figures = tiny_repo / "results" / "cyclegan_ct_mri" / "figures"
    for name in ("triplets.png", "loss_curves.png", "preprocessing_ct_head.png", "preprocessing_mri_t2.png"):
        assert (figures / name).stat().st_size > 5_000, name


@pytest.mark.slow
def test_same_target_again_does_nothing(tiny_repo: Path):
    assert planned_jobs(tiny_repo) == {}


@pytest.mark.slow
def test_one_mlflow_run_with_params_metrics_artifacts(tiny_repo: Path):
    db = sqlite3.connect(tiny_repo / "mlflow.db")
    runs = db.execute(
        "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
        "WHERE e.name = 'cyclegan_ct_mri'"
    ).fetchall()
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    run_id = runs[0][0]
    params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
    assert params["train.k_ratio"] == "4"
    metric_keys = {k for (k,) in db.execute("SELECT DISTINCT key FROM metrics WHERE run_uuid = ?", (run_id,))}
    assert any(k.startswith("ct_to_mri") for k in metric_keys), metric_keys
    artifact_uri = db.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]
    artifact_dir = Path(artifact_uri.removeprefix("file://"))
    if not artifact_dir.is_absolute():
        artifact_dir = tiny_repo / artifact_dir
    names = {p.name for p in artifact_dir.rglob("*") if p.is_file()}
    assert "metrics.json" in names and "triplets.png" in names, names


@pytest.mark.slow
def test_training_param_change_reruns_only_training_and_after(tiny_repo: Path):
    set_param(tiny_repo, "experiments.cyclegan_ct_mri.train.lr_g", 2.0e-4)
    try:
        assert set(planned_jobs(tiny_repo)) == {"train", "evaluate"}
    finally:
        set_param(tiny_repo, "experiments.cyclegan_ct_mri.train.lr_g", 1.0e-4)


@pytest.mark.slow
def test_window_change_reruns_windowing_and_after_but_not_download(tiny_repo: Path):
    set_param(tiny_repo, "preprocess.ct_window", {"preset": "custom", "center": 40, "width": 90})
    try:
        jobs = planned_jobs(tiny_repo)
        assert "download" not in jobs
        assert jobs["window"] >= 1 and jobs["window_partner"] >= 1
        assert {"register", "extract_slices", "train", "evaluate"} <= set(jobs)
    finally:
        set_param(tiny_repo, "preprocess.ct_window", {"preset": "brain"})


def test_snakemake_lint_is_clean(repo_root):
    proc = run(["snakemake", "--lint"], repo_root, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
