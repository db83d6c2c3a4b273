"""Report 003's measures on hand-made cases: Dice per organ, style per organ, the metrics schema."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate import organ_style
from pipeline.evaluate.dice import dice_per_class
from pipeline.evaluate.map_to_image import _verdict, pairwise_diversity


def test_dice_per_class_equals_a_direct_count():
    predicted = np.zeros((6, 6), np.uint8)
    reference = np.zeros((6, 6), np.uint8)
    predicted[0:2, 0:2] = 1           # 4 pixels of class 1
    reference[0:2, 0:3] = 1           # 6 pixels of class 1, 4 shared with the prediction
    predicted[4:6, 4:6] = 3           # class 3 only predicted: no overlap
    reference[3, 3] = 2               # class 2 only in the reference
    # class 4 and 5: in neither map
    scores = dice_per_class(predicted[None], reference[None], 6)[0]

    def direct(c):
        p, r = predicted == c, reference == c
        return 2 * np.sum(p & r) / (p.sum() + r.sum())

    assert scores[1] == pytest.approx(2 * 4 / (4 + 6))
    assert scores[0] == pytest.approx(direct(0))
    assert scores[2] == 0.0 and scores[3] == 0.0
    assert np.isnan(scores[4]) and np.isnan(scores[5])   # absent from both: no evidence, left out
    assert dice_per_class(reference[None], reference[None], 6)[0, :3] == pytest.approx([1, 1, 1])


def test_dice_rejects_maps_of_different_shape():
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 5), np.uint8), 6)


def _stripes(shape, period: int, low: float, high: float) -> np.ndarray:
    columns = (np.arange(shape[1]) // (period // 2)) % 2
    return np.where(columns[None, :] == 1, high, low).repeat(shape[0], axis=0).astype(np.float32)


def _case(seed: int = 0):
    """A style image whose organ 1 is coarse bright stripes, a content image whose organ 1 is a
    smooth dark grain; maps differ in where organ 1 lies (the generator's map is the content's)."""
    rng = np.random.default_rng(seed)
    size = 32
    content_map = np.zeros((size, size), np.uint8)
    content_map[4:28, 2:16] = 1
    style_map = np.zeros((size, size), np.uint8)
    style_map[6:30, 14:30] = 1
    style_texture = _stripes((size, size), 4, 0.55, 0.95)
    content_texture = np.clip(0.25 + 0.02 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)
    style = np.where(style_map == 1, style_texture, 0.0).astype(np.float32)
    content = np.where(content_map == 1, content_texture, 0.0).astype(np.float32)
    return content, content_map, style, style_map, style_texture, content_texture


@pytest.mark.parametrize("copied_from", ["style", "content"])
def test_style_distances_name_the_image_the_texture_came_from(copied_from):
    content, content_map, style, style_map, style_texture, content_texture = _case()
    texture = style_texture if copied_from == "style" else content_texture
    generated = np.where(content_map == 1, texture, 0.0).astype(np.float32)  # anatomy of the content map
    d = organ_style.organ_style_distances(generated[None], content_map[None], content[None], content_map[None],
                                          style, style_map, n_classes=2, intensity=(-1000.0, 400.0))
    other = "content" if copied_from == "style" else "style"
    for measure in ("gram", "w1"):
        near, far = d[f"{measure}_to_{copied_from}"][0, 1], d[f"{measure}_to_{other}"][0, 1]
        assert near < far, (measure, near, far)
    # W1 in HU: the texture's own histogram is matched exactly (same values, other pixels)
    if copied_from == "content":
        assert d["w1_to_content"][0, 1] == pytest.approx(0.0, abs=1.0)


def test_style_distance_is_nan_for_an_organ_too_small_or_absent():
    content, content_map, style, style_map, _, _ = _case()
    d = organ_style.organ_style_distances(content[None], content_map[None], content[None], content_map[None],
                                          style, style_map, n_classes=3, min_pixels=16)
    assert np.all(np.isnan(d["gram_to_style"][:, 2]))     # class 2 absent everywhere
    assert d["gram_to_content"][0, 1] == pytest.approx(0.0, abs=1e-12)   # identical organ, identical features


def test_masked_gram_equals_a_direct_computation():
    rng = np.random.default_rng(1)
    layer1, layer2 = rng.standard_normal((3, 8, 8)), rng.standard_normal((4, 4, 4))
    mask = np.zeros((8, 8))
    mask[2:6, 1:5] = 1
    grams = organ_style.masked_grams([layer1, layer2], mask)
    direct1 = np.einsum("ihw,jhw->ij", layer1 * mask, layer1 * mask) / (3 * mask.sum())
    pooled = mask.reshape(4, 2, 4, 2).mean(axis=(1, 3))    # the mask carried down one 2x2 pooling
    direct2 = np.einsum("ihw,jhw->ij", layer2 * pooled, layer2 * pooled) / (4 * pooled.sum())
    assert np.allclose(grams[0], direct1) and np.allclose(grams[1], direct2)
    assert organ_style.masked_grams([layer1], np.zeros((8, 8))) is None


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
    from pipeline.evaluate import validate_metrics
    from pipeline.evaluate.intervals import IntervalPolicy
    from pipeline.evaluate.map_to_image import evaluate_map_to_image
    from pipeline.evaluate.segmenter import DEFAULT_SETTINGS, train_segmenter
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
