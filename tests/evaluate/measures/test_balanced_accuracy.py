"""Balanced accuracy with its subject-bootstrap interval, against a hand computation."""
from __future__ import annotations

import numpy as np
import pytest

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
