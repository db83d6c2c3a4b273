from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.measures import prdc


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Naeem et al.'s four formulas written out with loops over samples (independent of the module)."""

    def radius(points, i):
        others = sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)
        return others[k - 1]

    r = [radius(real, i) for i in range(len(real))]
    s = [radius(fake, j) for j in range(len(fake))]
    dist = lambda x, y: np.linalg.norm(x - y)
    precision = np.mean([any(dist(y, real[i]) < r[i] for i in range(len(real))) for y in fake])
    recall = np.mean([any(dist(x, fake[j]) < s[j] for j in range(len(fake))) for x in real])
    density = sum(dist(y, real[i]) < r[i] for y in fake for i in range(len(real))) / (k * len(fake))
    coverage = np.mean([min(dist(real[i], y) for y in fake) < r[i] for i in range(len(real))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_matches_a_brute_force_computation_on_overlapping_sets():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 6))
    fake = np.concatenate([rng.normal(size=(25, 6)) * 0.3, rng.normal(loc=3.0, size=(10, 6))])
    measures = prdc.prdc(real, fake, k=5)
    expected = brute_force(real, fake, 5)
    assert measures == pytest.approx(expected, abs=1e-12)
    assert 0 < measures["precision"] < 1 and 0 < measures["coverage"] < 1  # the case separates the measures


def test_identical_sets_are_fully_covered():
    real = np.random.default_rng(2).normal(size=(60, 4))
    measures = prdc.prdc(real, real.copy(), k=5)
    assert measures["precision"] == measures["recall"] == measures["coverage"] == 1.0
    # each fake sits on its own real sample; an open ball of radius r_i holds X_i and its k - 1
    # nearer neighbours (the k-th lies on the boundary): sum_i |{j: X_j in ball(X_i)}| = N k without ties
    assert measures["density"] == pytest.approx(1.0)


def test_balls_are_open_so_a_copy_of_duplicated_real_vectors_is_not_inside_their_zero_radius_ball():
    """Six identical real vectors (blank slices): each one's 5th nearest other real vector is a copy,
    radius 0. A generated copy of them is inside no ball (Naeem et al.'s reference uses <); a closed
    ball (<=) would count it as inside all six and as covering them."""
    rng = np.random.default_rng(5)
    blank = np.zeros((6, 4))
    spread = rng.integers(20, 40, size=(14, 4)).astype(np.float64)  # far from the blanks, radii > 0
    real = np.concatenate([blank, spread])
    fake = np.concatenate([np.zeros((1, 4)), spread[:9] + 0.5])
    measures = prdc.prdc(real, fake, k=5)
    assert measures == pytest.approx(brute_force(real, fake, 5), abs=1e-12)
    # by hand: the blank copy is inside no real ball (6 of radius 0, 14 far away), so precision <= 9/10
    assert measures["precision"] <= 0.9
    # and none of the six blanks is covered (their balls hold nothing), so coverage <= 14/20
    assert measures["coverage"] <= 14 / 20


def test_disjoint_far_apart_sets_score_zero():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(30, 4))
    measures = prdc.prdc(real, rng.normal(size=(30, 4)) + 1000.0, k=5)
    assert measures == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_subsets_by_row_index_equal_the_measures_of_the_subsets():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(30, 3)), rng.normal(size=(20, 3)) + 0.5
    rows_real, rows_fake = np.arange(3, 27), np.arange(0, 20, 2)
    assert prdc.PRDC(real, fake)(rows_real, rows_fake) == pytest.approx(prdc.prdc(real[rows_real], fake[rows_fake]))
    assert prdc.PRDC(real, fake)(rows_real[:5], rows_fake) is None  # k = 5 needs more than 5 per set


def test_too_few_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="more than 5 samples"):
        prdc.prdc(np.zeros((5, 2)), np.ones((10, 2)))


def test_intervals_of_the_three_shares_stay_in_the_unit_range_density_may_pass_one():
    """Generated samples all inside the real set's balls, subjects of uneven size: recall, coverage
    and precision sit at or near 1, where the jackknife's symmetric t interval reaches past 1 (seen
    as recall [0.8, 1.04] in a run); the block clips the three shares to [0, 1], not density."""
    from pipeline.evaluate.measures import distribution, intervals
    from pipeline.evaluate.measures.intervals import IntervalPolicy

    rng = np.random.default_rng(4)
    real = rng.normal(size=(60, 3))
    generated = real[rng.integers(0, 60, 90)] + rng.normal(scale=0.05, size=(90, 3))  # crowded, inside
    real_subjects = np.repeat(np.arange(10), 6).astype(str)
    generated_ids = np.repeat(np.arange(15), 6).astype(str)
    policy = IntervalPolicy(min_subjects=8)
    block = distribution.prdc_block(real, real_subjects, generated, generated_ids, policy)
    measures = prdc.PRDC(real, generated)
    unclipped = {
        name: intervals.two_set_ci(
            lambda r, g, name=name: measures(r, g)[name], real_subjects, generated_ids, policy
        )["ci95"]
        for name in prdc.MEASURES
    }
    assert max(unclipped[name][1] for name in ("precision", "recall", "coverage")) > 1.0  # the case arises
    for name in ("precision", "recall", "coverage"):
        low, high = block[name]["ci95"]
        assert 0.0 <= low <= block[name]["value"] <= high <= 1.0
        assert (low, high) == (min(unclipped[name][0], 1.0), min(unclipped[name][1], 1.0))
    assert block["density"]["value"] > 1.0 and block["density"]["ci95"] == unclipped["density"]
