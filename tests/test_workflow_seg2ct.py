"""Through Snakemake: report 003's target results/seg2ct_style/metrics.json from empty data, tiny profile.

download (phantom_tcia_thorax) -> prepare_thorax_slices -> train (seg2ct) + train_segmenter ->
evaluate_map_to_image, as the session's tiny build (conftest's ``built_tiny_repo``: `dvc repro` from
empty data) made it; finite metrics and the figures; a rerun does
nothing; a changed style weight reruns training and evaluation only (not the data, not the
segmenter). The segmenter is also checked on its own, on the same held-out phantom slices.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from workflow_support import changed_param, planned_jobs

TARGET = "results/seg2ct_style/metrics.json"
FIGURES = ("panels", "perturbed", "z_draws", "organ_histograms")
SEGMENTER_MIN_DICE = 0.6
"""Mean organ Dice (classes 1-5) the segmenter must reach on held-out real phantom slices."""


def _numbers(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _numbers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _numbers(value)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node


@pytest.mark.slow
def test_seg2ct_target_from_empty_data_and_reruns(built_tiny_repo: Path):
    work = built_tiny_repo
    metrics = json.loads((work / TARGET).read_text())
    assert metrics["task"] == "map_to_image"
    assert all(math.isfinite(x) for x in _numbers(metrics))
    anatomy = metrics["anatomy"]
    for block in ("segmenter_real_test", "generated_test_maps", "generated_perturbed_maps"):
        assert 0.0 <= anatomy[block]["mean_organ_dice"]["mean"] <= 1.0
    assert anatomy["generated_test_maps"]["n_images"] == metrics["inputs"]["test"]["n_images"]
    assert metrics["perceptual_weights"] == "random"        # offline default: said so in metrics.json
    assert metrics["style_per_organ"]["reason"] is None      # fixed style image (the default style_mode)
    assert metrics["memorisation"]["n_train"] == metrics["inputs"]["train"]["n_images"]
    for name in FIGURES:
        assert (work / "results" / "seg2ct_style" / "figures" / f"{name}.png").stat().st_size > 0
    generated = np.load(work / "results" / "seg2ct_style" / "generated" / "perturbed.npz")
    assert len(generated["images"]) == metrics["generator"]["n_from_perturbed_maps"] > 0
    assert generated["label_maps"].max() <= 5 and int(generated["seed"]) == metrics["generator"]["perturbed_seed"]

    assert planned_jobs(work, TARGET) == {}
    with changed_param(work, "experiments.seg2ct_style.model.style_weight", 2.5):
        assert planned_jobs(work, TARGET) == {"train": 1, "evaluate_map_to_image": 1}
    with changed_param(work, "experiments.seg2ct_style.segmenter.epochs", 4):
        assert planned_jobs(work, TARGET) == {"train_segmenter": 1, "evaluate_map_to_image": 1}


@pytest.mark.slow
def test_segmenter_beats_a_stated_dice_on_heldout_phantom_slices(built_tiny_repo: Path, repo_root: Path, tmp_path: Path):
    """Trained with the default profile's segmenter knobs on the tiny run's real phantom slices;
    its Dice on the held-out test patients bounds what the generated images' Dice can show."""
    from pipeline.config import read_yaml_mapping
    from pipeline.evaluate.measures.segmenter import train_segmenter
    from pipeline.preprocess.thorax_labels import CLASS_NAMES

    settings = read_yaml_mapping(repo_root / "params.yaml")["experiments"]["seg2ct_style"]["segmenter"]
    slices = built_tiny_repo / "data" / "slices" / "ct_thorax"
    summary = train_segmenter(slices / "train.npz", slices / "val.npz", slices / "test.npz", list(CLASS_NAMES),
                              dict(settings) | {"threads": 1}, 0, tmp_path / "segmenter.pt", tmp_path / "segmenter.json",
                              n_boot=200)
    test = np.load(slices / "test.npz")
    train = np.load(slices / "train.npz")
    assert not set(map(str, test["subject_ids"])) & set(map(str, train["subject_ids"]))   # held-out patients
    assert summary["test"]["mean_organ_dice"]["mean"] > SEGMENTER_MIN_DICE, summary["test"]
