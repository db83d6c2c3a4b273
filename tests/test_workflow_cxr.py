"""End to end: report 000's chest X-ray experiment through Snakemake on configs/tiny.yaml.

Phantom radiographs -> two class datasets -> CycleGAN (ResNet / PatchGAN) -> metrics and
figures, in a copy of the repository, with the MLflow run checked in its SQLite store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from workflow_support import experiment_runs, numbers, planned_jobs

TARGET = "results/cyclegan_cxr_pneumonia/metrics.json"
DIRECTIONS = ("normal_to_pneumonia", "pneumonia_to_normal")


@pytest.fixture(scope="module")
def cxr_repo(built_tiny_repo: Path) -> Path:
    """The session's tiny build: its `dvc repro` runs the X-ray stages beside the headline's."""
    return built_tiny_repo


@pytest.mark.slow
def test_cxr_target_has_finite_metrics_and_figures(cxr_repo: Path):
    metrics = json.loads((cxr_repo / TARGET).read_text())
    assert all(math.isfinite(value) for value in numbers(metrics))
    for name in DIRECTIONS:
        block = metrics[name]
        assert block["n_source"] > 0 and 0.0 <= block["ssim"]["mean"] <= 1.0
        assert 0.0 <= block["regions"]["share_inside"] <= 1.0  # lung masks from the phantom truth
        # the tiny classifier may fail its real-test check: then the share is null and says why
        classifier = block["classifier"]
        assert classifier["classifier_auc"]["value"] is not None
        assert (classifier["share_intended"]["mean"] is not None) != bool(classifier["reason"])
    figures = cxr_repo / "results" / "cyclegan_cxr_pneumonia" / "figures"
    for name in ("triplets.png", "loss_curves.png", "difference_maps.png"):
        assert (figures / name).stat().st_size > 5_000, name


@pytest.mark.slow
def test_classes_come_from_one_raw_set_split_by_patient(cxr_repo: Path):
    for stage in ("windowed", "registered", "masked"):  # no volume chain for X-rays
        assert not list((cxr_repo / "data" / stage).glob("*cxr*")), stage
        assert not (cxr_repo / "data" / stage / "chest_xray").exists(), stage
    for dataset in ("cxr_normal", "cxr_pneumonia"):
        patients = {}
        for split in ("train", "val", "test"):
            with np.load(cxr_repo / "data" / "slices" / dataset / f"{split}.npz") as npz:
                patients[split] = set(npz["subject_ids"])
                if split == "test":
                    assert npz["region_mask"].shape == npz["images"].shape
        assert not patients["train"] & (patients["val"] | patients["test"])


@pytest.mark.slow
def test_one_finished_mlflow_run_and_nothing_left_to_do(cxr_repo: Path):
    assert experiment_runs(cxr_repo, "cyclegan_cxr_pneumonia", "r.status") == [("FINISHED",)]
    assert planned_jobs(cxr_repo, TARGET) == {}
