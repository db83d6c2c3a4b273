"""LDA separation on Gaussian codes with a known separation (closed form)."""
from __future__ import annotations

import numpy as np
from scipy.stats import norm
from scipy.stats import t as t_dist

from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.latent.separation import code_features, separate, separation, split_subjects


def _gaussian_codes(delta: float, n_per_class: int, dim: int, seed: int):
    """Two unit-covariance Gaussians whose means are ``delta`` apart along a random direction:
    the best linear projection separates them by delta standard deviations (Mahalanobis distance)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    healthy = rng.normal(size=(n_per_class, dim))
    diseased = rng.normal(size=(n_per_class, dim)) + delta * direction
    codes = np.concatenate([healthy, diseased])[:, None, :].repeat(3, axis=1)   # W: 3 equal layers
    labels = np.repeat([0, 1], n_per_class)
    subjects = np.array([f"p{i}" for i in range(2 * n_per_class)])
    return codes, labels, subjects, direction


def test_separation_matches_the_closed_form_distance():
    delta = 3.0
    codes, labels, subjects, direction = _gaussian_codes(delta, 3000, 6, seed=0)
    section, arrays = separate(codes, labels, subjects, {"fit_fraction": 0.5, "solver": "lsqr", "shrinkage": "auto"},
                               seed=1, policy=IntervalPolicy(min_subjects=8, n_boot=200, seed=0))
    for key in ("separation_fit", "separation_heldout"):
        block = section[key]
        assert abs(block["value"] - delta) < 0.12, (key, block["value"])
        assert block["ci95"][0] <= block["value"] <= block["ci95"][1]
        assert block["ci95"][0] < delta + 0.12 and block["ci95"][1] > delta - 0.12
    assert abs(abs(arrays["direction"] @ direction) - 1.0) < 0.01, "LDA's normal is the true direction"
    # The Bayes accuracy of two unit Gaussians delta apart is Phi(delta / 2); AUC is Phi(delta / sqrt 2).
    assert abs(section["accuracy_heldout"]["value"] - norm.cdf(delta / 2)) < 0.02
    assert abs(section["auc_heldout"]["value"] - norm.cdf(delta / np.sqrt(2))) < 0.01


def test_no_separation_without_a_difference_on_held_out_codes():
    codes, labels, subjects, _ = _gaussian_codes(0.0, 400, 6, seed=2)
    section, _ = separate(codes, labels, subjects, {"fit_fraction": 0.5, "solver": "lsqr", "shrinkage": "auto"},
                          seed=1, policy=IntervalPolicy(min_subjects=8, n_boot=100, seed=0))
    assert section["separation_heldout"]["value"] < 0.3
    assert abs(section["auc_heldout"]["value"] - 0.5) < 0.1


def test_separation_by_hand_and_split_keeps_subjects_together():
    projections = np.array([0.0, 2.0, 10.0, 14.0])
    labels = np.array([0, 0, 1, 1])
    # means 1 and 12, stds (ddof 1) sqrt(2) and sqrt(8): 11 / ((1.414 + 2.828) / 2)
    assert np.isclose(separation(projections, labels), 11.0 / ((np.sqrt(2) + np.sqrt(8)) / 2))
    subjects = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    fit = split_subjects(subjects, np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.5, seed=0)
    for s in np.unique(subjects):
        assert len(set(fit[subjects == s])) == 1
    assert fit.sum() == 4


def test_w_plus_codes_are_flattened_and_w_codes_give_one_w():
    w = np.random.default_rng(0).normal(size=(5, 1, 4)).repeat(3, axis=1)
    assert code_features(w).shape == (5, 4)
    w[:, 1] += 1.0
    assert code_features(w).shape == (5, 12)


def test_too_few_codes_of_a_class_give_null_measures_with_the_reason():
    codes, labels, subjects, _ = _gaussian_codes(2.0, 10, 4, seed=3)
    labels[11:] = 0                       # one cardiomegaly code left
    section, arrays = separate(codes, labels, subjects, {"fit_fraction": 0.5, "solver": "lsqr", "shrinkage": "auto"},
                               seed=1, policy=IntervalPolicy(min_subjects=8, n_boot=50, seed=0))
    assert section["separation_fit"] is None and section["separation_heldout"] is None
    assert "cardiomegaly" in section["reason"]
    assert arrays["direction"].size == 0


def test_a_perfect_held_out_separation_is_not_an_interval_at_one():
    """Codes far apart: every held-out code ranked and called right, every bootstrap replicate 1.
    AUC and accuracy get Wilson's interval on the scoring subjects, not [1, 1]."""
    codes, labels, subjects, _ = _gaussian_codes(40.0, 20, 6, seed=3)
    section, _ = separate(codes, labels, subjects, {"fit_fraction": 0.5, "solver": "lsqr", "shrinkage": "auto"},
                          seed=1, policy=IntervalPolicy(min_subjects=8, n_boot=100, seed=0))
    n = section["auc_heldout"]["n_subjects"]
    q2 = t_dist.ppf(0.975, n - 1) ** 2
    wilson_low = (1 + q2 / (2 * n) - np.sqrt(q2) * np.sqrt(q2 / (4 * n**2))) / (1 + q2 / n)
    for key in ("auc_heldout", "accuracy_heldout"):
        block = section[key]
        assert block["value"] == 1.0 and block["ci_method"] == "wilson_at_bound", block
        assert np.allclose(block["ci95"], [wilson_low, 1.0]) and block["ci95"][0] < 0.9
