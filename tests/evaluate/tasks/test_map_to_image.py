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


def test_each_organs_frd_has_its_real_vs_real_floor(monkeypatch):
    """frd_per_organ's floor: real test slices vs real training slices, each inside its own map,
    the same FRD computation (stand-in features: mean, spread and top of the organ's pixels)."""
    from pipeline.evaluate.measures import frd as frd_module
    from pipeline.evaluate.measures.intervals import IntervalPolicy
    from pipeline.evaluate.tasks.map_to_image import frd_per_organ_block

    def organ_statistics(images, desc="", masks=None):
        rows = [[image[mask].mean(), image[mask].std(), image[mask].max()] if mask.any() else [np.nan] * 3
                for image, mask in zip(images, masks)]
        return np.array(rows, np.float64), ["mean", "std", "max"]

    monkeypatch.setattr(frd_module, "radiomic_features", organ_statistics)
    rng = np.random.default_rng(0)
    maps = lambda n: np.stack([np.pad(np.ones((8, 8), int), 4) * (1 + i % 2) for i in range(n)])  # organs 1 or 2
    real, generated, train = rng.random((10, 16, 16)), rng.random((12, 16, 16)), 0.5 + 0.5 * rng.random((20, 16, 16))
    real_maps, generated_maps, train_maps = maps(10), maps(12), maps(20)
    subjects = lambda prefix, n: np.array([f"{prefix}{i // 2}" for i in range(n)])
    block = frd_per_organ_block(real, real_maps, subjects("r", 10), generated, generated_maps, subjects("g", 12),
                                ["background", "one", "two"], 50, IntervalPolicy(min_subjects=2, n_boot=50),
                                floor=(train, train_maps, subjects("t", 20)))
    kept = np.linspace(0, 19, 12).round().astype(int)  # as many training slices as generated ones, evenly spaced
    for c, organ in ((1, "one"), (2, "two")):
        by_hand = frd_module.frd_from_features(organ_statistics(real, masks=real_maps == c)[0],
                                               organ_statistics(train[kept], masks=train_maps[kept] == c)[0])[0]
        floor = block["floor"][organ]
        # half the slices show each organ: 6 generated and 6 training slices enter each organ's FRD
        assert floor["value"] == pytest.approx(by_hand) and floor["n_compared"] == 6 and floor["size_matched"]
        assert block[organ]["value"] < floor["value"]  # the generated set is drawn like the real one, training is brighter
