"""Real-vs-real floors: the same distances, computed between two real sets, checked by hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from pipeline.evaluate.measures.floor import FLOOR_SET, floor_block, floor_rows, frd_floor
from pipeline.evaluate.measures.intervals import IntervalPolicy

POLICY = IntervalPolicy(min_subjects=4, n_boot=50, seed=0)
NO_FRD = {"inception": None, "frd": "FRD switched off (evaluate.frd: false)"}


def hand_made_sets(n_train: int, shift: float = 0.0):
    """Held-out real features (10 subjects x 2) and training-patient features (n_train rows, 2 a subject)."""
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(20, 4))
    train = rng.normal(loc=shift, size=(n_train, 4))
    reference_subjects = np.repeat([f"test{i}" for i in range(10)], 2)
    train_subjects = np.repeat([f"train{i}" for i in range(n_train // 2)], 2)
    return reference, reference_subjects, train, train_subjects


def fid_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    covariance_a, covariance_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(covariance_a @ covariance_b).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(covariance_a + covariance_b - 2 * root))


def kid_by_hand(a, groups_a, b, groups_b) -> float:
    kernel = lambda x, y: (x @ y / len(x) + 1.0) ** 3
    within = lambda s, g: np.mean([kernel(s[i], s[j]) for i in range(len(s)) for j in range(len(s)) if g[i] != g[j]])
    between = np.mean([kernel(x, y) for x in a for y in b])
    return within(a, groups_a) + within(b, groups_b) - 2 * between


def precision_by_hand(real, generated, k=5) -> float:
    """Share of generated rows inside some real row's ball (radius: distance to its k-th real neighbour)."""
    radii = [np.sort(np.linalg.norm(real - x, axis=1))[k] for x in real]  # [0] is the row itself
    return float(np.mean([any(np.linalg.norm(y - x) <= r for x, r in zip(real, radii)) for y in generated]))


def features_of(reference, train_rows_kept):
    return {"inception": {"real": reference, FLOOR_SET: train_rows_kept},
            "embedding": {"real": reference, FLOOR_SET: train_rows_kept}}


def test_floor_is_the_same_distance_between_two_real_sets_cut_to_the_compared_size():
    reference, reference_subjects, train, train_subjects = hand_made_sets(n_train=36)
    n_compared = 24
    kept = np.linspace(0, 35, n_compared).round().astype(int)  # evenly spaced over the training patients
    block = floor_block(np.arange(20), reference_subjects, train_subjects[kept], n_compared,
                        features_of(reference, train[kept]), {}, NO_FRD, 1e-6, POLICY, "train vs test")
    assert block["n_floor"] == n_compared and block["size_matched"] and block["n_reference"] == 20
    assert block["n_floor_subjects"] == len(np.unique(train_subjects[kept])) and block["reason"] is None
    assert block["fid"]["value"] == pytest.approx(fid_by_hand(reference, train[kept]), rel=1e-6)
    assert block["kid"]["value"] == pytest.approx(
        kid_by_hand(reference, reference_subjects, train[kept], train_subjects[kept]), rel=1e-9)
    assert block["prdc"]["precision"]["value"] == pytest.approx(precision_by_hand(reference, train[kept]))
    for name in ("fid", "kid"):  # intervals over patients of both sets, containing the estimate
        low, high = block[name]["ci95"]
        assert low <= block[name]["value"] <= high and block[name]["ci_method"] == "subject_jackknife"
    assert block["frd"]["value"] is None and "switched off" in block["frd"]["reason"]


def test_a_floor_from_fewer_real_images_says_its_size_does_not_match():
    reference, reference_subjects, train, train_subjects = hand_made_sets(n_train=12)
    block = floor_block(np.arange(20), reference_subjects, train_subjects, 40, features_of(reference, train), {},
                        NO_FRD, 1e-6, POLICY, "train vs test")
    assert block["n_floor"] == 12 and block["n_compared"] == 40 and not block["size_matched"]


def test_a_floor_of_one_class_uses_only_that_subset_and_a_shifted_real_set_raises_the_floor():
    reference, reference_subjects, train, train_subjects = hand_made_sets(n_train=36)
    subset = np.arange(0, 36, 3)
    block = floor_block(np.arange(20), reference_subjects, train_subjects, 12, features_of(reference, train), {},
                        NO_FRD, 1e-6, POLICY, "class c", floor_subset=subset)
    assert block["n_floor"] == 12 and block["fid"]["value"] == pytest.approx(fid_by_hand(reference, train[subset]))
    _, _, shifted, _ = hand_made_sets(n_train=36, shift=3.0)
    far = floor_block(np.arange(20), reference_subjects, train_subjects, 36, features_of(reference, shifted), {},
                      NO_FRD, 1e-6, POLICY, "shifted")
    assert far["fid"]["value"] > 4 * 3.0**2 * 0.8  # squared mean shift of 3 in each of 4 dimensions


def test_organ_frd_floor_is_frd_of_the_two_real_sets():
    reference, reference_subjects, train, train_subjects = hand_made_sets(n_train=36)
    block = frd_floor(reference, reference_subjects, train, train_subjects, 30, POLICY)
    mean, std = reference.mean(0), reference.std(0)
    by_hand = np.log(fid_by_hand((reference - mean) / std, (train - mean) / std))
    assert block["value"] == pytest.approx(by_hand, rel=1e-5) and block["n_compared"] == 30
    assert not block["size_matched"] and block["ci95"][0] <= block["value"] <= block["ci95"][1]


def test_floor_rows_spread_over_all_training_patients():
    assert list(floor_rows(36, 24)) == list(np.linspace(0, 35, 24).round().astype(int))
    assert list(floor_rows(10, 40)) == list(range(10))
