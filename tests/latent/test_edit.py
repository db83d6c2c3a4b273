"""Edits: the direction, the edited codes and the CTR change per unit alpha on hand-made cases."""
from __future__ import annotations

import numpy as np

from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.latent.edit import apply_edit, direction_as_code, slopes, ssim_outside, unit_direction
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
