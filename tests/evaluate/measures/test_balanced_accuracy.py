"""Balanced accuracy with its subject-bootstrap interval, against a hand computation."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.summary import balanced_accuracy


def test_balanced_accuracy_is_the_mean_of_the_per_class_shares_right():
    # class 0: 1 of 2 right (0.5); class 1: 3 of 3 (1.0) -> 0.75, whatever the class sizes
    block = balanced_accuracy(np.array([1, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1]), np.array(list("abcde")),
                              IntervalPolicy(min_subjects=8))
    assert block["value"] == pytest.approx(0.75)
    assert block["ci95"] is None and "fewer than" in block["ci95_reason"]


def test_interval_over_subjects_contains_the_value_and_a_single_class_has_none():
    rng = np.random.default_rng(0)
    labels = np.tile([0, 0, 0, 1], 30)
    correct = (rng.random(120) < np.where(labels == 1, 0.9, 0.6)).astype(float)
    subjects = np.repeat([f"p{i}" for i in range(30)], 4)
    block = balanced_accuracy(correct, labels, subjects, IntervalPolicy())
    expected = 0.5 * (correct[labels == 0].mean() + correct[labels == 1].mean())
    assert block["value"] == pytest.approx(expected)
    low, high = block["ci95"]
    assert low < expected < high and high - low < 0.3
    single = balanced_accuracy(correct[labels == 0], labels[labels == 0], subjects[labels == 0], IntervalPolicy())
    assert single["value"] is None and single["ci95"] is None and "only" in single["reason"]


def wilson_lower_by_hand(n: int) -> float:
    """Wilson's score lower bound of a share of 1 from n units with t(0.975, n - 1) for z."""
    q2 = stats.t.ppf(0.975, n - 1) ** 2
    return (1 + q2 / (2 * n) - np.sqrt(q2) * np.sqrt(q2 / (4 * n**2))) / (1 + q2 / n)


def test_every_image_right_on_eight_subjects_is_not_an_interval_at_one():
    """All 8 subjects' images called right: every bootstrap replicate is 1, and a percentile
    interval [1, 1] would pass 'balanced accuracy >= 0.8' from 8 patients. Wilson on the 8 subjects."""
    labels = np.tile([0, 1, 1], 8)
    block = balanced_accuracy(np.ones(24), labels, np.repeat([f"p{i}" for i in range(8)], 3), IntervalPolicy())
    assert block["value"] == 1.0 and block["ci_method"] == "wilson_at_bound"
    assert block["ci95"] == pytest.approx([wilson_lower_by_hand(8), 1.0]) and 0.55 < block["ci95"][0] < 0.62
    none_right = balanced_accuracy(np.zeros(24), labels, np.repeat([f"p{i}" for i in range(8)], 3), IntervalPolicy())
    assert none_right["ci95"] == pytest.approx([0.0, 1.0 - wilson_lower_by_hand(8)])
