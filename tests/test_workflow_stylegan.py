"""Through Snakemake: report 004's target on configs/tiny.yaml, from empty data.

download (phantom_chexpert) -> prepare_chexpert -> train (StyleGAN2) -> train_encoder,
train_ctr_segmenter, train_classifier_labelled, evaluate_stylegan_generator -> invert ->
separate -> edit -> assemble_stylegan, as the session's tiny build (conftest's ``built_tiny_repo``:
`dvc repro` from empty data) made it: finite metrics, the figures,
a rerun does nothing, and an edit knob reruns only the edit rule and the assembly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.evaluate.metrics_json import validate_metrics
from workflow_support import changed_param, planned_jobs

EXPERIMENT = "stylegan_cxr_cardiomegaly"
TARGET = f"results/{EXPERIMENT}/metrics.json"
FIGURES = ("sample_grid", "truncation_sweep", "reconstructions", "lda_projections", "edit_sequence", "edit_curves")


@pytest.mark.slow
def test_stylegan_editing_target_from_empty_data_and_reruns(built_tiny_repo: Path):
    work = built_tiny_repo

    metrics = json.loads((work / TARGET).read_text())
    validate_metrics(metrics)
    assert metrics["task"] == "stylegan_editing"
    head = metrics["headline"]
    for key in ("real_ssim_encoder", "real_ssim_optimisation", "synthetic_w_error_start",
                "synthetic_w_error_optimisation", "lda_separation_fit"):
        assert head[key] is not None and math.isfinite(head[key]), key
    # Latent optimisation gets closer to the true w than its starting code, even on the tiny run.
    assert head["synthetic_w_error_optimisation"] < head["synthetic_w_error_start"]
    assert metrics["inversion"]["loss"]["kind"] == "mse_ssim"          # weights.pretrained: none
    for name in FIGURES:
        assert (work / "results" / EXPERIMENT / "figures" / f"{name}.png").stat().st_size > 0, name
    assert (work / "models" / EXPERIMENT / "encoder" / "model.pt").exists()

    assert planned_jobs(work, TARGET) == {}
    with changed_param(work, f"experiments.{EXPERIMENT}.edit.alphas", [0.0, 1.0, 3.0]):
        assert planned_jobs(work, TARGET) == {"edit": 1, "assemble_stylegan": 1}
