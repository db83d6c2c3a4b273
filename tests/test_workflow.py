"""End to end: the whole headline chain for real (Snakemake, DVC, MLflow, ANTs) on configs/tiny.yaml.

The repository is copied to a temporary folder with the tiny profile merged into its
params.yaml, so Snakemake and DVC read the same knobs and the developer's tree stays clean.
"""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from workflow_support import TARGET, changed_param, copy_ignore, experiment_runs, planned_jobs, run


@pytest.fixture(scope="module")
def tiny_repo(built_tiny_repo) -> Path:
    """Every dvc.yaml stage's target built by one Snakemake run, then `dvc commit` (once per
    session, see conftest.py)."""
    return built_tiny_repo


@pytest.mark.slow
def test_built_chain_has_the_headline_target_and_dvc_agrees(tiny_repo: Path):
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
    paired = metrics["mri_to_ct"]["paired"]
    assert paired["mae_window_hu"]["mean"] >= 0.0
    # the phantom's CT partner reaches the evaluation in full HU: the body-masked MAE is computed,
    # and a brain-window translator cannot come below its floor (skull and air lie outside 0..79 HU)
    body = paired["ct_body"]
    assert body["hu_clip"] == [-1024.0, 3000.0] and body["mae_hu_body_floor"]["mean"] > 100.0
    assert body["mae_hu_body"]["mean"] >= body["mae_hu_body_floor"]["mean"] - 1e-6  # pixel by pixel, in fact
    for block in (metrics["ct_to_mri"], metrics["mri_to_ct"]):  # FRD needs no weights; classifier; intervals
        assert isinstance(block["frd"]["value"], float) and block["frd"]["n_features"] > 100
        assert 0.0 <= block["classifier"]["share_intended"]["mean"] <= 1.0
        assert "ci95" in block["ssim"] and isinstance(block["steganography"]["flagged"], bool)
    assert 0.0 <= metrics["classifier"]["test_accuracy"]["mean"] <= 1.0
    # The tiny profile holds out 1 subject per modality: fewer than evaluate.min_subjects, so every
    # interval is null with the reason, never a number (validate_metrics already rejected any interval
    # beside fewer subjects than the minimum, or one excluding its estimate).
    minimum = metrics["settings"]["intervals"]["min_subjects"]
    assert minimum == 8 and "jackknife" in metrics["settings"]["intervals"]["methods"]["subject_jackknife"]
    for block in (metrics["ct_to_mri"], metrics["mri_to_ct"]):
        for interval in (block["ssim"], block["ssim_cycle"], block["frd"]):
            assert interval["ci95"] is None and f"fewer than evaluate.min_subjects = {minimum}" in interval["ci95_reason"]
    for qc in ("data/registered/ct_head/qc.csv", "data/masked/ct_head/contact_sheet.png",
               "data/registered/mri_t2/qc.csv", "data/windowed/mri_t2/contact_sheet.png"):
        assert (tiny_repo / qc).stat().st_size > 200, qc
    figures = tiny_repo / "results" / "cyclegan_ct_mri" / "figures"
    for name in ("triplets.png", "loss_curves.png", "preprocessing_ct_head.png", "preprocessing_mri_t2.png",
                 "sample_grid.png", "difference_maps.png", "histograms.png", "metrics_table.png"):
        assert (figures / name).stat().st_size > 5_000, name


@pytest.mark.slow
def test_same_target_again_does_nothing(tiny_repo: Path):
    assert planned_jobs(tiny_repo) == {}


@pytest.mark.slow
def test_dvc_repro_runs_a_stage_command_and_both_tools_agree(tiny_repo: Path):
    """The build gave Snakemake every stage's targets at once; here DVC runs one stage's own
    command (touch the inputs, then build), as `dvc repro` and `dvc exp run` do."""
    stage, target = "assemble_stylegan_cxr_cardiomegaly", "results/stylegan_cxr_cardiomegaly/metrics.json"
    built = (tiny_repo / target).stat().st_mtime_ns
    run(["dvc", "repro", "--force", "--single-item", stage], tiny_repo)
    assert (tiny_repo / target).stat().st_mtime_ns > built, "the stage's command rebuilt its target"
    assert "up to date" in run(["dvc", "status"], tiny_repo).stdout
    assert planned_jobs(tiny_repo, target) == {}


@pytest.mark.slow
def test_one_mlflow_run_with_params_metrics_artifacts(tiny_repo: Path):
    runs = experiment_runs(tiny_repo, "cyclegan_ct_mri")
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    run_id = runs[0][0]
    db = sqlite3.connect(tiny_repo / "mlflow.db")
    params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
    assert params["model.g_steps_per_d_step"] == "4" and params["train.epochs"] == "2"
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
    with changed_param(tiny_repo, "experiments.cyclegan_ct_mri.model.lr_g", 2.0e-4):
        assert set(planned_jobs(tiny_repo)) == {"train", "evaluate"}


@pytest.mark.slow
def test_window_change_reruns_windowing_and_after_but_not_download(tiny_repo: Path):
    with changed_param(tiny_repo, "preprocess.ct_window", {"preset": "custom", "center": 40, "width": 90}):
        jobs = planned_jobs(tiny_repo)
    assert "download" not in jobs
    # one window job per dataset: the CT volumes, and the MR dataset's CT partners (windowed too)
    assert jobs["window"] == 2
    assert {"register", "extract_slices", "train", "evaluate"} <= set(jobs)
    with changed_param(tiny_repo, "preprocess.partner_hu_range", [-1000.0, 3000.0]):
        assert planned_jobs(tiny_repo)["window"] == 1, "only the MR dataset has full-HU CT partners"
    assert planned_jobs(tiny_repo) == {}


def test_snakemake_lint_is_clean(repo_root):
    proc = run(["snakemake", "--lint"], repo_root, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_weights_become_inputs_only_when_requested(repo_root, tmp_path):
    """By default nothing is fetched (offline); with a local folder the weight files are
    verified and copied in before training and evaluation."""
    assert "download_weights" not in planned_jobs(repo_root)
    override = tmp_path / "weights.yaml"
    override.write_text(f"weights:\n  pretrained: imagenet\n  local_dir: {tmp_path}\n")
    out = run(["snakemake", "-n", "--cores", "1", "--configfile", str(override), "--", TARGET], repo_root).stdout
    assert re.search(r"^download_weights\s+3$", out, re.M), out[-2000:]


def test_dry_run_on_a_fresh_clone_plans_the_whole_chain(repo_root, tmp_path):
    """Before the download checkpoint has run, `snakemake -n` must still format every job."""
    work = tmp_path / "clone"
    shutil.copytree(repo_root, work, ignore=copy_ignore(repo_root))
    jobs = planned_jobs(work)
    assert jobs["download"] == 2 and jobs["train"] == 1 and jobs["evaluate"] == 1, jobs
    assert jobs["window"] == jobs["register"] == 2, "windowing and registration: one job per dataset"
