"""Report 003's map-to-image evaluator: its verdict rule, the diversity measure and the whole evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.tasks.map_to_image import (_verdict, changed_pixels_block, pairwise_diversity,
                                                  reference_ct_block)


def test_verdict_needs_an_interval_that_excludes_zero():
    assert _verdict({"mean": 1.0, "ci95": [0.2, 1.5]}) == "style"
    assert _verdict({"mean": -1.0, "ci95": [-2.0, -0.1]}) == "content"
    assert _verdict({"mean": 0.5, "ci95": [-0.1, 1.0]}) == "undecided"
    assert _verdict({"mean": 0.5, "ci95": None}) == "undecided"


def test_perturbed_minus_unperturbed_is_the_paired_per_image_difference():
    """8 source maps (one patient each), a 4 x 4 block of class 0 turned into class 2. The image of
    the perturbed map follows it on images 0-5 (Dice 1 on the changed pixels), not on 6-7; the
    image of the unperturbed map never does (it keeps class 0 there: Dice 0)."""
    source = np.zeros((8, 12, 12), np.int64)
    source[:, 6:] = 1
    perturbed = source.copy()
    perturbed[:, 1:5, 1:5] = 2
    predicted = perturbed.copy()
    predicted[6:] = source[6:]
    block = changed_pixels_block(predicted, perturbed, source, source.copy(), np.array([f"p{i}" for i in range(8)]),
                                 ["background", "body", "lungs"], IntervalPolicy(min_subjects=8))
    # organ classes 1 and 2: class 1 is absent from the changed pixels (NaN), class 2 scores 1 or 0
    per_image = np.array([1.0] * 6 + [0.0] * 2)
    assert block["perturbed_minus_unperturbed"]["mean"] == pytest.approx(per_image.mean())
    assert block["perturbed_minus_unperturbed"]["n"] == 8
    assert block["unperturbed_image_floor"]["mean_organ_dice"]["mean"] == 0.0
    low, high = block["perturbed_minus_unperturbed"]["ci95"]
    assert low < 0.75 < high and block["perturbed_minus_unperturbed"]["ci_method"] == "subject_t"


def test_pairwise_diversity_is_zero_for_copies_and_grows_with_difference():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (16, 16)).astype(np.float32)
    assert pairwise_diversity(np.stack([image, image, image])) == pytest.approx((0.0, 0.0), abs=1e-9)
    shifted = np.clip(image + 0.1, 0, 1)
    rms, _ = pairwise_diversity(np.stack([image, shifted]))
    assert rms == pytest.approx(float(np.sqrt(np.mean((shifted - image) ** 2))))


def test_reference_ct_in_hu_inside_the_body_by_hand():
    """A thorax slice in HU: a 12x12 body of soft tissue (40 HU) around 2 lungs of 3x4 pixels (-800 HU),
    in air; the generated image paints tissue at 60 HU and lungs at -700 HU. Lungs lie below the
    -500 HU threshold but inside the body: filling holes brings them back."""
    hu_window = (-1000.0, 1000.0)
    real = np.full((16, 16), -1000.0)
    real[2:14, 2:14] = 40.0
    generated = np.full((16, 16), -1000.0)
    generated[2:14, 2:14] = 60.0
    for columns in (slice(4, 7), slice(9, 12)):
        real[5:9, columns], generated[5:9, columns] = -800.0, -700.0
    unit = lambda hu: ((hu - hu_window[0]) / (hu_window[1] - hu_window[0]))[None].astype(np.float32)
    test = {"images": unit(real), "hu_window": np.array(hu_window, np.float32)}
    block, reason = reference_ct_block(test, unit(generated), np.array(["p1"]), -500.0, IntervalPolicy())
    assert reason is None
    lungs, tissue = 2 * 3 * 4, 12 * 12 - 2 * 3 * 4
    assert block["mae_hu_body"]["mean"] == pytest.approx((lungs * 100.0 + tissue * 20.0) / 144, rel=1e-5)
    assert block["psnr_hu_body"]["data_range"] == 2000.0 and block["hu_clip"] == [-1000.0, 1000.0]
    assert block["psnr_hu_body"]["mean"] == pytest.approx(
        10 * np.log10(2000.0**2 / ((lungs * 100.0**2 + tissue * 20.0**2) / 144)), rel=1e-5)
    assert block["mae_hu_body_floor"] is None  # the generator is not confined to a window
    none, reason = reference_ct_block({"images": test["images"]}, unit(generated), np.array(["p1"]), -500.0,
                                      IntervalPolicy())
    assert none is None and "hu_window" in reason


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
                                    n_perturbed=6, frd=False, diversity_maps=2, diversity_draws=2,
                                    intervals_policy=IntervalPolicy(n_boot=50), samples_out=tmp_path / "s.npz",
                                    generated_out=tmp_path / "perturbed.npz")
    validate_metrics(metrics)
    json.dumps(metrics, allow_nan=False)   # every number finite (NaN / infinity would raise)
    assert math.isfinite(metrics["diversity"]["rms_difference"]["mean"])
    lungs = metrics["style_per_organ"]["per_organ"]["lungs"]["w1"]
    assert lungs["to_style"]["mean"] < lungs["to_content"]["mean"]
    assert lungs["share_closer_to_style"]["mean"] == 1.0
    assert metrics["anatomy"]["generated_test_maps"]["n_images"] == len(test["images"])
    assert metrics["perceptual_weights"] == "random" and metrics["generator"]["style_fixed"]
    assert metrics["reference_ct"]["mae_hu_body"]["n"] == len(test["images"])
    # perturbations start from HELD-OUT maps: every source is a test patient's map, none a training one
    grown = np.load(tmp_path / "perturbed.npz")
    assert set(grown["subject_ids"].astype(str)) <= set(test["subject_ids"].astype(str))
    assert not set(grown["subject_ids"].astype(str)) & set(train["subject_ids"].astype(str))
    for k, source in enumerate(grown["source_index"]):
        changed = grown["label_maps"][k] != test["label_maps"][source]
        assert changed.any() and changed.mean() < 0.5     # a perturbation of that test map, not another map
    changed_pixels = metrics["anatomy"]["generated_perturbed_maps"]["changed_pixels"]
    assert changed_pixels["n_images"] == 6 and math.isfinite(changed_pixels["mean_organ_dice"]["mean"])
    assert metrics["style_transfer"]["reason"]           # one generator: no style test, and it says why


class _TexturePainter:
    """A map-to-image generator for the style test: paints body and lungs of any map with a fixed
    texture image (seeded grain on top); carries what the style test reads from a seg2ct model."""

    task = "map_to_image"

    def __init__(self, texture, style_image, style_map, style_subject, pair, style_weight):
        self.texture, self.style_image, self.style_map = texture, style_image, style_map
        self.style_subject, self.texture_pair, self.style_weight = style_subject, pair, style_weight

    def generate(self, maps, seed=0, z=None):
        rng = np.random.default_rng(seed)
        grain = 0.01 * rng.standard_normal(maps.shape)
        painted = np.where((maps == 1) | (maps == 2), self.texture[None] + grain, 0.0)
        return np.clip(painted, 0, 1).astype(np.float32)


def _style_test(control_texture_of):
    """Style patients A (coarse bright stripes) and B (dark grain); the styled generators paint
    their own style's texture; the controls paint control_texture_of(side)."""
    from map_support import thorax_map
    from pipeline.evaluate.measures.intervals import IntervalPolicy
    from pipeline.evaluate.tasks.map_to_image import style_transfer_block
    from pipeline.preprocess.thorax_labels import CLASS_NAMES

    rng = np.random.default_rng(5)
    size = 32
    columns = (np.arange(size) // 3) % 2
    textures = {"first": np.where(columns[None, :] == 1, 0.9, 0.5).repeat(size, 0),
                "second": np.clip(0.3 + 0.04 * rng.standard_normal((size, size)), 0, 1)}
    style_map = thorax_map(size, rng)
    styles = {side: np.where((style_map == 1) | (style_map == 2), t, 0.0).astype(np.float32)
              for side, t in textures.items()}
    pair = {"first": "pA", "second": "pB", "distance": 1.0}
    subject = {"first": "pA", "second": "pB"}
    styled = {side: _TexturePainter(textures[side], styles[side], style_map, subject[side], pair, 1.0)
              for side in ("first", "second")}
    controls = {f"control_{side}": _TexturePainter(control_texture_of(textures, side), styles[side], style_map,
                                                   subject[side], pair, 0.0) for side in ("first", "second")}
    maps = np.stack([thorax_map(size, rng) for _ in range(10)])
    subjects = np.array([f"t{i}" for i in range(10)])
    block, drawn = style_transfer_block(styled["first"], {"second": styled["second"], **controls}, maps, subjects, 0,
                                        4, list(CLASS_NAMES), ("body", "lungs"), 4, None,
                                        IntervalPolicy(n_boot=200))
    return block, drawn


def test_style_test_finds_the_own_style_and_a_control_without_style_shows_none():
    # controls paint one texture between the two (both runs learnt the same thing without the style loss)
    block, drawn = _style_test(lambda t, side: (t["first"] + t["second"]) / 2)
    assert block["reason"] is None and block["style_patients"] == {"first": "pA", "second": "pB"}
    for organ in ("body", "lungs"):
        styled, control = block["per_organ"][organ]["styled"], block["per_organ"][organ]["control"]
        assert styled["ci95"][0] > 0.3, (organ, styled)                  # each nearer its own style patient
        assert control["ci95"][0] <= 0 <= control["ci95"][1], (organ, control)   # no preference
        assert block["per_organ"][organ]["share_nearer_own"]["mean"] == 1.0
    assert drawn["styled_first"].shape == (10, 32, 32) and "style_second" in drawn


def test_style_test_control_shows_a_preference_when_its_runs_copy_the_styles():
    """If the style-weight-0 twins still end up with their patients' textures (e.g. through their
    content sets), the control measures the same preference: the test must not credit the style loss."""
    block, _ = _style_test(lambda t, side: t[side])
    for organ in ("body", "lungs"):
        assert block["per_organ"][organ]["control"]["ci95"][0] > 0.3


def test_style_test_is_null_with_the_reason_without_its_generators():
    from map_support import OrganPainter
    from pipeline.evaluate.tasks.map_to_image import style_transfer_block

    painter = OrganPainter(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8))
    block, drawn = style_transfer_block(painter, {}, np.zeros((2, 8, 8), np.uint8), np.array(["a", "b"]), 0, 2,
                                        ["background", "body", "lungs"], ("body", "lungs"), 4, None, None)
    assert block["reason"] and "texture pair" in block["reason"] and drawn == {}


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
