from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate import bootstrap


def test_intervals_resample_subjects_not_images():
    # Subject s1: 3 images at 0, subject s2: 1 image at 1. Replicates can only be the image-weighted
    # means of {s1,s1}, {s1,s2}, {s2,s2}: 0, 1/4, 1 -- never the slice-level 1/2.
    values = np.array([0.0, 0.0, 0.0, 1.0])
    subjects = np.array(["s1", "s1", "s1", "s2"])
    low, high = bootstrap.mean_ci(values, subjects, n_boot=2000, seed=0)
    assert (low, high) == (0.0, 1.0)
    counts, image_subject = bootstrap.subject_draws(subjects, 500, np.random.default_rng(1))
    replicates = (counts @ np.bincount(image_subject, weights=values)) / (counts @ np.bincount(image_subject))
    assert set(np.round(replicates, 6)) == {0.0, 0.25, 1.0}


def test_interval_covers_the_mean_narrows_with_more_subjects_and_repeats_with_the_seed():
    rng = np.random.default_rng(3)
    widths = []
    for n_subjects in (5, 80):
        subject_means = rng.normal(0.7, 0.1, size=n_subjects)
        values = np.repeat(subject_means, 4) + rng.normal(0, 0.01, size=4 * n_subjects)
        subjects = np.repeat([f"p{i}" for i in range(n_subjects)], 4)
        low, high = bootstrap.mean_ci(values, subjects, n_boot=1000, seed=5)
        assert low < values.mean() < high
        assert bootstrap.mean_ci(values, subjects, n_boot=1000, seed=5) == [low, high]
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_one_subject_gives_no_interval_and_infinities_are_left_out():
    assert bootstrap.mean_ci(np.array([0.2, 0.4]), np.array(["a", "a"])) is None
    values = np.array([np.inf, 10.0, 20.0, 20.0])
    low, high = bootstrap.mean_ci(values, np.array(["a", "a", "b", "b"]), n_boot=500, seed=0)
    assert low == pytest.approx(10.0) and high == pytest.approx(20.0)


def test_ratio_interval_is_a_ratio_of_sums():
    inside, total = np.array([1.0, 1.0, 9.0]), np.array([2.0, 2.0, 10.0])
    low, high = bootstrap.ratio_ci(inside, total, np.array(["a", "a", "b"]), n_boot=2000, seed=0)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.9)  # {a,a}: 2/4, {b,b}: 18/20


def test_two_set_interval_resamples_both_sets():
    rng = np.random.default_rng(0)
    real, generated = rng.normal(size=(20, 3)), rng.normal(size=(20, 3)) + 2.0
    ids = np.repeat([f"s{i}" for i in range(10)], 2)
    distance = lambda r, g: float(np.sum((r.mean(0) - g.mean(0)) ** 2))
    low, high = bootstrap.two_set_ci(distance, real, ids, generated, ids, n_boot=300, seed=1)
    assert low < distance(real, generated) < high and low > 5.0
    assert bootstrap.two_set_ci(distance, real, ids, generated, np.array(["x"] * 20)) is None
