"""Report 003's map-to-image evaluator: its verdict rule, the diversity measure and the whole evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.tasks.map_to_image import _verdict, pairwise_diversity


def test_verdict_needs_an_interval_that_excludes_zero():
    assert _verdict({"mean": 1.0, "ci95": [0.2, 1.5]}) == "style"
    assert _verdict({"mean": -1.0, "ci95": [-2.0, -0.1]}) == "content"
    assert _verdict({"mean": 0.5, "ci95": [-0.1, 1.0]}) == "undecided"
    assert _verdict({"mean": 0.5, "ci95": None}) == "undecided"


def test_pairwise_diversity_is_zero_for_copies_and_grows_with_difference():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (16, 16)).astype(np.float32)
    assert pairwise_diversity(np.stack([image, image, image])) == pytest.approx((0.0, 0.0), abs=1e-9)
    shifted = np.clip(image + 0.1, 0, 1)
    rms, _ = pairwise_diversity(np.stack([image, shifted]))
    assert rms == pytest.approx(float(np.sqrt(np.mean((shifted - image) ** 2))))


@pytest.mark.slow
def test_evaluator_writes_valid_metrics_for_a_transparent_generator(tmp_path):
    """The whole evaluator on hand-made thorax maps with a generator that paints each organ with
    the style image's mean grey value: metrics.json validates, every number is finite, the W1
    distances say the grey values came from the style image where style and content differ."""
    import json
    import math

    from map_support import OrganPainter, slices_npz
    from pipeline.evaluate.metrics_json import validate_metrics
    from pipeline.evaluate.measures.intervals import IntervalPolicy
    from pipeline.evaluate.tasks.map_to_image import evaluate_map_to_image
    from pipeline.evaluate.measures.segmenter import DEFAULT_SETTINGS, train_segmenter
    from pipeline.preprocess.thorax_labels import CLASS_NAMES

    train = slices_npz(tmp_path / "train.npz", 8, 1, 32, seed=1, prefix="a")
    slices_npz(tmp_path / "val.npz", 2, 1, 32, seed=2, prefix="b")
    test = slices_npz(tmp_path / "test.npz", 8, 1, 32, seed=3, prefix="c")
    train_segmenter(tmp_path / "train.npz", tmp_path / "val.npz", tmp_path / "test.npz", list(CLASS_NAMES),
                    DEFAULT_SETTINGS | {"epochs": 2, "width": 4, "depth": 2, "threads": 1}, 0,
                    tmp_path / "seg.pt", tmp_path / "seg.json", n_boot=50)
    style = train["images"][0].copy()
    style[train["label_maps"][0] == 2] = 0.3      # the style's lungs are far brighter than any content's (0.12)
    painter = OrganPainter(style, train["label_maps"][0])
    metrics = evaluate_map_to_image(painter, tmp_path / "test.npz", tmp_path / "train.npz", tmp_path / "seg.pt",
                                    n_perturbed=0, frd=False, diversity_maps=2, diversity_draws=2,
                                    intervals_policy=IntervalPolicy(n_boot=50), samples_out=tmp_path / "s.npz")
    validate_metrics(metrics)
    json.dumps(metrics, allow_nan=False)   # every number finite (NaN / infinity would raise)
    assert math.isfinite(metrics["diversity"]["rms_difference"]["mean"])
    lungs = metrics["style_per_organ"]["per_organ"]["lungs"]["w1"]
    assert lungs["to_style"]["mean"] < lungs["to_content"]["mean"]
    assert lungs["share_closer_to_style"]["mean"] == 1.0
    assert metrics["anatomy"]["generated_test_maps"]["n_images"] == len(test["images"])
    assert metrics["perceptual_weights"] == "random" and metrics["generator"]["style_fixed"]
