"""Edits: the direction, the edited codes and the CTR change per unit alpha on hand-made cases."""
from __future__ import annotations

import types

import numpy as np
import torch

from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.latent.edit import (apply_edit, at_target_block, difference_length, direction_as_code, regression_direction,
                                  slopes, ssim_outside, thorax_outside_heart, unit_direction)
from pipeline.latent.edit import _summary


def test_ctr_slope_per_unit_alpha_on_a_hand_made_case():
    alphas = [0.0, 1.0, 2.0, 4.0]
    rng = np.random.default_rng(0)
    true_slopes = rng.uniform(0.01, 0.05, size=12)
    ctr = 0.42 + true_slopes[:, None] * np.asarray(alphas)[None]
    assert np.allclose(slopes(alphas, ctr), true_slopes)
    ctr[0, 2] = np.nan                     # a failed segmentation is left out, not a zero
    assert np.isclose(slopes(alphas, ctr)[0], true_slopes[0])
    subjects = np.array([f"p{i}" for i in range(12)])
    block = _summary(slopes(alphas, ctr), subjects, IntervalPolicy(min_subjects=8, n_boot=500, seed=0))
    assert np.isclose(block["mean"], true_slopes.mean())
    assert block["ci95"][0] <= true_slopes.mean() <= block["ci95"][1]


def test_edit_moves_codes_along_a_unit_direction():
    difference = np.zeros((3, 4))
    difference[:, 1] = 2.0
    step = unit_direction(difference, per_layer=False)
    assert np.allclose(step, [[0, 1, 0, 0]] * 3)
    plus = unit_direction(difference, per_layer=True)
    assert np.isclose(np.linalg.norm(plus), 1.0)
    assert np.isclose(difference_length(difference, per_layer=False), 2.0)           # one layer's w
    assert np.isclose(difference_length(difference, per_layer=True), 2.0 * np.sqrt(3))  # all three layers
    codes = np.ones((2, 3, 4))
    edited = apply_edit(codes, step, [0.0, 0.5, 2.0])
    assert edited.shape == (2, 3, 3, 4)
    assert np.allclose(edited[:, 0], codes)
    assert np.allclose(edited[:, 2, :, 1], 3.0) and np.allclose(edited[:, 2, :, 0], 1.0)
    assert np.allclose(direction_as_code(np.array([0, 0, 1.0, 0]), 3, 4), [[0, 0, 1, 0]] * 3)


def test_identity_ssim_ignores_the_heart_region():
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(32, 32))
    edited = image.copy()
    edited[12:20, 12:20] = 1.0 - edited[12:20, 12:20]      # the "heart" changed
    outside = np.ones((32, 32), bool)
    outside[6:26, 6:26] = False                             # heart plus the SSIM window's reach
    assert np.isclose(ssim_outside(image, edited, outside), 1.0)
    everywhere = np.ones((32, 32), bool)
    assert ssim_outside(image, edited, everywhere) < 0.95


def _hand_ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Wang et al.'s SSIM map written out: Gaussian-weighted local means, variances and covariance
    (sigma 1.5, window truncated at 3.5 sigma, reflected borders), C1 = (0.01)^2, C2 = (0.03)^2."""
    from scipy.ndimage import gaussian_filter

    blur = lambda a: gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def test_identity_ssim_outside_the_heart_matches_a_hand_computation():
    rng = np.random.default_rng(4)
    image = rng.uniform(size=(40, 40))
    edited = np.clip(image + rng.normal(0, 0.1, size=image.shape), 0, 1)
    edited[14:24, 16:28] = 0.9                              # the "heart" redrawn
    outside = np.ones(image.shape, bool)
    outside[14:24, 16:28] = False
    expected = _hand_ssim_map(image, edited)[outside].mean()
    assert np.isclose(ssim_outside(image, edited, outside), expected, atol=1e-6)
    assert np.isnan(ssim_outside(image, edited, np.zeros(image.shape, bool)))


def test_identity_ssim_is_averaged_over_the_thorax_outside_the_heart_not_the_background():
    """A 48 px film: a 24 px thorax (class 1) with a heart (class 2) in a flat black background
    (class 0). The edit adds noise to the lungs; the background stays black, where SSIM is 1."""
    rng = np.random.default_rng(6)
    base_map = np.zeros((48, 48), np.int64)
    base_map[12:36, 12:36] = 1
    base_map[20:28, 20:26] = 2
    edited_map = base_map.copy()
    edited_map[20:29, 20:27] = 2                             # the heart grew
    image = np.where(base_map > 0, 0.5 + 0.2 * rng.standard_normal((48, 48)), 0.0).clip(0, 1)
    edited = np.where(base_map == 1, image + rng.normal(0, 0.15, image.shape), image).clip(0, 1)
    region = thorax_outside_heart(base_map, edited_map)
    by_hand = (base_map >= 1) & (base_map != 2) & (edited_map != 2)
    assert np.array_equal(region, by_hand) and not region[:12].any()
    expected = _hand_ssim_map(image, edited)[by_hand].mean()
    assert np.isclose(ssim_outside(image, edited, region), expected, atol=1e-6)
    with_background = ssim_outside(image, edited, (base_map != 2) & (edited_map != 2))
    assert with_background > expected + 0.1  # the black three quarters of the film would lift it


class _FilmSampler:
    """A stand-in synthesis for edit_block: a 48 px film, black background, a 24 px thorax whose
    texture changes with the code's first number (the edit), a heart that does not."""

    def __init__(self):
        rng = np.random.default_rng(7)
        self.generator = torch.nn.Linear(1, 1)
        self.image_size = (48, 48)
        self.map = np.zeros((48, 48), np.int64)
        self.map[12:36, 12:36] = 1
        self.map[20:28, 20:26] = 2
        self.texture, self.change = rng.uniform(0.3, 0.7, (48, 48)), rng.normal(0, 0.2, (48, 48))

    def synthesis(self, ws, noise_mode):
        amount = ws[:, 0, 0].double().numpy()[:, None, None]
        films = np.where(self.map == 1, self.texture + amount * self.change, np.where(self.map == 2, 0.8, 0.0))
        return torch.from_numpy(films.clip(0, 1) * 2 - 1)[:, None]


def test_edit_blocks_identity_ssim_leaves_the_black_background_out():
    from pipeline.latent.edit import edit_block

    sampler = _FilmSampler()
    measures = types.SimpleNamespace(maps=lambda images: np.repeat(sampler.map[None], len(images), axis=0),
                                     probability=lambda images: np.full(len(images), 0.5))
    policy = IntervalPolicy(min_subjects=2, n_boot=50, seed=0)
    codes, step = np.zeros((4, 2, 3)), np.zeros((2, 3))
    step[:, 0] = 1.0
    block, arrays = edit_block(sampler, measures, codes, np.arange(4), step, [0.0, 1.0], policy)
    base, edited = arrays["images"][0, 0].astype(np.float64), arrays["images"][0, 1].astype(np.float64)
    thorax = sampler.map == 1
    expected = _hand_ssim_map(base, edited)[thorax].mean()
    assert np.isclose(block["identity_ssim_outside_heart"]["mean"], expected, atol=1e-5)
    assert _hand_ssim_map(base, edited)[sampler.map != 2].mean() > expected + 0.1  # what the background would add


def test_ctr_slope_interval_excludes_zero_only_when_the_edits_move_the_heart():
    policy = IntervalPolicy(min_subjects=8, n_boot=1000, seed=0)
    alphas = [0.0, 1.0, 2.0, 3.0]
    rng = np.random.default_rng(5)
    subjects = np.repeat([f"p{i}" for i in range(10)], 2)    # two images per patient
    growing = 0.42 + 0.03 * np.asarray(alphas)[None] + rng.normal(0, 0.005, size=(20, 4))
    block = _summary(slopes(alphas, growing), subjects, policy)
    assert 0.025 < block["ci95"][0] <= block["mean"] <= block["ci95"][1] < 0.035
    # half the patients' hearts grow, half shrink as much: no effect, the interval holds 0
    sign = np.where(np.arange(20) // 2 % 2 == 0, 1.0, -1.0)[:, None]
    mixed = 0.42 + sign * 0.03 * np.asarray(alphas)[None] + rng.normal(0, 0.005, size=(20, 4))
    block = _summary(slopes(alphas, mixed), subjects, policy)
    assert block["ci95"][0] < 0 < block["ci95"][1]


def test_at_target_picks_the_first_alpha_whose_ctr_interval_clears_the_target():
    policy = IntervalPolicy(min_subjects=8, n_boot=1000, seed=0)
    alphas = [0.0, 1.0, 2.0, 3.0, 4.0]
    rng = np.random.default_rng(6)
    n = 12
    subjects = np.array([f"p{i}" for i in range(n)])
    ctr = 0.40 + 0.04 * np.asarray(alphas)[None] + rng.normal(0, 0.004, size=(n, 5))   # 0.40 .. 0.56
    identity = np.tile([np.nan, 0.95, 0.9, 0.8, 0.6], (n, 1))
    probability = np.tile([0.1, 0.2, 0.4, 0.7, 0.9], (n, 1))
    block = at_target_block(alphas, ctr, identity, probability, subjects, 0.5, policy)
    # mean CTR 0.48 at alpha 2 (interval below 0.5), 0.52 at alpha 3 (interval above): alpha 3
    assert block["reached"] and block["alpha"] == 3.0
    assert block["ctr"]["ci95"][0] >= 0.5
    assert np.isclose(block["identity_ssim_outside_heart"]["mean"], 0.8)
    assert np.isclose(block["probability"]["mean"], 0.7)
    assert np.isclose(block["share_of_images_reaching"]["mean"], 1.0)
    # the heart never reaches 0.5: not reached, reported at the alpha of the largest mean CTR
    low = 0.45 - 0.01 * np.asarray(alphas)[None] + rng.normal(0, 0.004, size=(n, 5))
    block = at_target_block(alphas, low, identity, probability, subjects, 0.5, policy)
    assert not block["reached"] and block["alpha"] == 1.0      # edited alphas only: the largest mean at alpha 1
    assert block["share_of_images_reaching"]["mean"] == 0.0
    # reconstructions that already measure a large heart cannot show an edit reaching it: null, with the reason
    high = 0.55 + 0.01 * np.asarray(alphas)[None] + rng.normal(0, 0.004, size=(n, 5))
    block = at_target_block(alphas, high, identity, probability, subjects, 0.5, policy)
    assert block["ctr"]["mean"] is None and "already" in block["reason"] and not block["reached"]


def test_ctr_regression_direction_recovers_the_direction_that_sets_the_ctr():
    rng = np.random.default_rng(7)
    truth = rng.normal(size=16)
    truth /= np.linalg.norm(truth)
    w = rng.normal(size=(300, 16)) + 5.0 * truth            # codes centred away from 0 along the direction: needs the intercept
    ctr = 0.45 + 0.02 * (w @ truth) + rng.normal(0, 0.005, size=300)
    ctr[::50] = np.nan                                      # images the segmenter could not measure are left out
    vector, r2 = regression_direction(w, ctr)
    assert np.isclose(np.linalg.norm(vector), 1.0)
    assert vector @ truth > 0.98 and r2 > 0.9
    _, r2_noise = regression_direction(w, rng.normal(0.45, 0.02, size=300))   # CTR unrelated to w
    assert r2_noise < 0.15


def test_a_classifier_that_fails_its_check_leaves_no_probability_anywhere_in_the_edit_block():
    """Every P(cardiomegaly) of an edit block is null with the reason when the classifier fails its
    real-test check: per alpha, the slope, and at the alpha reaching the target CTR (a review found
    the last one reported from a classifier no better than chance)."""
    from pipeline.latent.edit import classifier_scores_checked

    policy = IntervalPolicy(n_boot=200, seed=0, min_subjects=2)
    subjects = np.repeat(np.arange(4), 2)
    probability = np.full((8, 3), 0.62)
    ctr = np.array([[0.45, 0.48, 0.55]] * 8) + np.linspace(0, 0.01, 8)[:, None]
    at_target = at_target_block([-1.0, 0.0, 1.0], ctr, np.ones((8, 3)), probability, subjects, 0.5, policy)
    assert at_target["probability"]["mean"] is not None  # measured before the check
    block = {"probability_per_alpha": [{"alpha": a, **_summary(probability[:, i], subjects, policy)}
                                       for i, a in enumerate([-1.0, 0.0, 1.0])],
             "probability_slope_per_unit_alpha": _summary(probability[:, 0], subjects, policy),
             "at_target_ctr": at_target}
    failed = {"usable": False, "reason": "real-test AUC 0.52 < 0.7", "auc": 0.52, "balanced_accuracy": 0.5}
    out = classifier_scores_checked(block, failed)
    assert all(entry["mean"] is None for entry in out["probability_per_alpha"])
    assert out["probability_slope_per_unit_alpha"]["mean"] is None
    assert out["at_target_ctr"]["probability"]["mean"] is None
    assert out["at_target_ctr"]["probability"]["ci95_reason"] == "real-test AUC 0.52 < 0.7"
    assert out["at_target_ctr"]["ctr"] == at_target["ctr"]  # the CTR needs no classifier
    passed = classifier_scores_checked(block, failed | {"usable": True, "reason": None})
    assert passed["at_target_ctr"]["probability"]["mean"] == at_target["probability"]["mean"]


def test_w_std_unit_is_the_spread_of_gs_codes_along_each_direction():
    """alpha_unit w_std: alpha 1 moves the codes by one standard deviation of G's codes along the
    direction, whatever the step's scale. Codes drawn with std 3 along one axis and 0.5 across it
    (mean 7, which plays no part); checked by the move each layer gets (step x multiplier)."""
    import pytest

    from pipeline.errors import ConfigError
    from pipeline.latent.edit import spread_along

    rng = np.random.default_rng(3)
    ws = rng.normal(size=(20000, 4)) * np.array([3.0, 0.5, 0.5, 0.5]) + 7.0
    layers = 2

    def move(step):
        return np.asarray(step) * spread_along(step, ws)

    along, across = np.zeros((layers, 4)), np.zeros((layers, 4))
    along[:, 0], across[:, 1] = 1.0, 1.0
    assert np.allclose(move(along), [[3.0, 0, 0, 0]] * layers, atol=0.05)       # W: each layer moves by 3
    assert np.allclose(move(across), [[0, 0.5, 0, 0]] * layers, atol=0.01)
    diagonal = unit_direction(np.array([[1.0, 1.0, 0, 0]] * layers), per_layer=False)
    expected = np.sqrt((9 + 0.25) / 2) * np.array([1.0, 1.0, 0, 0]) / np.sqrt(2)
    assert np.allclose(move(diagonal), [expected] * layers, atol=0.05)
    # the same W direction normalised over all layers (W+ inversion, W encoder): rows u / sqrt(layers);
    # the move must not shrink by sqrt(layers) (a review found the first version's did)
    flat_unit = unit_direction(along, per_layer=True)
    assert np.allclose(flat_unit, along / np.sqrt(layers))
    assert np.allclose(move(flat_unit), [[3.0, 0, 0, 0]] * layers, atol=0.05)
    # W+: a step differing per layer on codes repeated over the layers: sigma of w . (s_1 + s_2) / |s|
    plus = unit_direction(np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), per_layer=True)
    sigma = np.sqrt((3.0 ** 2 + 0.5 ** 2) / 2)
    assert np.allclose(move(plus), sigma * plus, atol=0.05)
    # no spread along the direction: an error, not a zero step
    with pytest.raises(ConfigError, match="do not vary"):
        spread_along(across, np.repeat(ws[:1], 10, axis=0))


def test_edit_block_reports_the_heart_and_thorax_widths_behind_the_ctr():
    """The CTR rises when the heart widens or when the thorax narrows: the edit block keeps both
    widths per alpha, as ctr_from_masks measures them (a review asked which one an edit moved)."""
    from pipeline.latent.edit import measure_widths

    maps = np.zeros((3, 16, 16), np.int64)
    maps[0, 2:14, 2:14] = 1
    maps[0, 8:12, 6:10] = 2          # heart 4 px wide, thorax 12
    maps[1, 2:14, 4:12] = 1          # thorax 8, no heart: no CTR, so no widths either
    maps[2, 5, 1:15] = 1
    maps[2, 9:11, 3:12] = 2          # heart 9 (columns 3-11), thorax 14 (the longest row)
    widths = measure_widths(maps)
    assert widths[0].tolist() == [4.0, 12.0]
    assert np.isnan(widths[1]).all()
    assert widths[2].tolist() == [9.0, 14.0]
