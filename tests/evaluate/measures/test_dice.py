"""Dice per class of label maps, against a direct count; the Dice summary every map-reading measure reports."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.measures.dice import dice_per_class, dice_summary
from pipeline.evaluate.measures.intervals import IntervalPolicy


def test_dice_per_class_equals_a_direct_count():
    predicted = np.zeros((6, 6), np.uint8)
    reference = np.zeros((6, 6), np.uint8)
    predicted[0:2, 0:2] = 1           # 4 pixels of class 1
    reference[0:2, 0:3] = 1           # 6 pixels of class 1, 4 shared with the prediction
    predicted[4:6, 4:6] = 3           # class 3 only predicted: no overlap
    reference[3, 3] = 2               # class 2 only in the reference
    # class 4 and 5: in neither map
    scores = dice_per_class(predicted[None], reference[None], 6)[0]

    def direct(c):
        p, r = predicted == c, reference == c
        return 2 * np.sum(p & r) / (p.sum() + r.sum())

    assert scores[1] == pytest.approx(2 * 4 / (4 + 6))
    assert scores[0] == pytest.approx(direct(0))
    assert scores[2] == 0.0 and scores[3] == 0.0
    assert np.isnan(scores[4]) and np.isnan(scores[5])   # absent from both: no evidence, left out
    assert dice_per_class(reference[None], reference[None], 6)[0, :3] == pytest.approx([1, 1, 1])


def test_dice_rejects_maps_of_different_shape():
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 5), np.uint8), 6)


def test_dice_summary_means_per_class_and_per_image_organ_means():
    """Per-class means over images (NaN left out) and the mean over images of each image's mean
    organ Dice, counted here by hand from the maps; ``compares`` leads the block only when given."""
    reference = np.zeros((3, 4, 4), np.uint8)
    reference[:, :2, :2] = 1
    reference[:, 2:, 2:] = 2
    reference[0, 0, 3] = 3            # class 3 only in image 0 (absent from both maps elsewhere: no evidence)
    predicted = reference.copy()
    predicted[1, 0, 0] = 0            # image 1: class 1 loses one of its 4 pixels
    predicted[2, 2:, 2:] = 0          # image 2: class 2 missed entirely
    subjects = np.array(["p1", "p1", "p2"])
    names = ["background", "one", "two", "three"]
    block, scores = dice_summary(predicted, reference, subjects, names, IntervalPolicy(min_subjects=2, n_boot=20))
    one = [1.0, 2 * 3 / (3 + 4), 1.0]
    two = [1.0, 1.0, 0.0]
    organ_means = [(1.0 + 1.0 + 1.0) / 3, (one[1] + two[1]) / 2, (one[2] + two[2]) / 2]  # class 3 left out of 1, 2
    assert list(block) == ["n_images", "n_subjects", "per_class", "mean_organ_dice"]
    assert block["n_images"] == 3 and block["n_subjects"] == 2
    assert block["per_class"]["one"]["mean"] == pytest.approx(np.mean(one))
    assert block["per_class"]["two"]["mean"] == pytest.approx(np.mean(two))
    assert block["per_class"]["three"]["mean"] == pytest.approx(1.0)
    assert block["mean_organ_dice"]["mean"] == pytest.approx(np.mean(organ_means))
    assert scores.shape == (3, 4)
    led, _ = dice_summary(predicted, reference, subjects, names, IntervalPolicy(), compares="what it compares")
    assert list(led)[0] == "compares" and led["compares"] == "what it compares"
