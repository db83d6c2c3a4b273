"""The diversity measure (mean pairwise distance over pairs of different subjects, generated / real)
against sums written out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.measures.diversity import MeanPairwiseDistance
from pipeline.evaluate.measures.intervals import IntervalPolicy


def test_ratio_counts_only_pairs_of_different_subjects():
    # real: subject a at 0 and 1, subject b at 3 -> pairs of different subjects (0, 3), (1, 3): (3 + 2) / 2
    real, real_subjects = np.array([[0.0], [1.0], [3.0]]), np.array(["a", "a", "b"])
    # generated, each its own: 0, 0, 2 -> (0 + 2 + 2) / 3
    generated, generated_ids = np.array([[0.0], [0.0], [2.0]]), np.array(["g0", "g1", "g2"])
    measure = MeanPairwiseDistance(real, real_subjects, generated, generated_ids)
    assert measure.real.mean() == pytest.approx(2.5)
    assert measure.generated.mean() == pytest.approx(4 / 3)
    assert measure.ratio() == pytest.approx((4 / 3) / 2.5)
    # a subset of rows: real rows 1, 2 -> one pair (1, 3) = 2; generated rows 0, 1 -> one pair = 0
    assert measure(np.array([1, 2]), np.array([0, 1])) == pytest.approx(0.0)


def test_euclidean_in_several_dimensions_and_collapse_gives_zero():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(12, 4))
    subjects = np.repeat([f"p{i}" for i in range(6)], 2)
    expected = np.mean([np.linalg.norm(real[i] - real[j]) for i in range(12) for j in range(i + 1, 12)
                        if subjects[i] != subjects[j]])
    collapsed = np.repeat(real[:1], 10, axis=0)
    measure = MeanPairwiseDistance(real, subjects, collapsed, np.array([f"g{i}" for i in range(10)]))
    assert measure.real.mean() == pytest.approx(expected)
    assert measure.ratio() == 0.0


def test_block_has_an_interval_around_the_ratio_and_a_reason_when_undefined():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 8))
    subjects = np.repeat([f"p{i}" for i in range(20)], 2)
    generated = 0.5 * rng.normal(size=(40, 8))
    ids = np.array([f"g{i}" for i in range(40)])
    block = MeanPairwiseDistance(real, subjects, generated, ids).block(IntervalPolicy(min_subjects=8), "toy")
    assert block["value"] == pytest.approx(0.5, abs=0.1)
    low, high = block["ci95"]
    assert low < block["value"] < high and high - low < 0.3
    one_subject = MeanPairwiseDistance(real[:2], subjects[:2], generated, ids).block(IntervalPolicy(), "toy")
    assert one_subject["value"] is None and one_subject["ci95"] is None and one_subject["reason"]
