"""Dice overlap per class of label maps: how faithfully an image follows the map it was made from.

Dice of class c between a predicted map P and a reference map R (both (H, W) class indices):

    Dice_c = 2 |P_c & R_c| / (|P_c| + |R_c|)

counted in pixels. When class c is absent from both maps the ratio is 0 / 0: it is NaN (no
evidence either way) and is left out of every mean, never counted as 1 (which would reward a
network for missing a small organ on the slices where it is absent anyway) nor as 0.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.summary import summarise

DEFINITION = ("Dice_c = 2|P_c & R_c| / (|P_c| + |R_c|) per image and class c, pixels counted; NaN (left out of "
              "means) when c is absent from both maps")


def dice_per_class(predicted: np.ndarray, reference: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) float64 Dice of each image's predicted vs reference map ((N, H, W) class indices)."""
    predicted = np.asarray(predicted)
    reference = np.asarray(reference)
    if predicted.shape != reference.shape:
        raise ValueError(f"predicted maps {predicted.shape} and reference maps {reference.shape} differ in shape")
    if predicted.ndim == 2:
        predicted, reference = predicted[None], reference[None]
    n_pixels = int(np.prod(predicted.shape[1:]))
    flat_p = predicted.reshape(len(predicted), n_pixels)
    flat_r = reference.reshape(len(reference), n_pixels)
    scores = np.empty((len(flat_p), n_classes), np.float64)
    for c in range(n_classes):
        p, r = flat_p == c, flat_r == c
        overlap = np.logical_and(p, r).sum(axis=1)
        total = p.sum(axis=1) + r.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores[:, c] = np.where(total > 0, 2.0 * overlap / np.maximum(total, 1), np.nan)
    return scores


def dice_summary(predicted: np.ndarray, reference: np.ndarray, subjects: np.ndarray, organ_names: list[str],
                 policy: IntervalPolicy, compares: str | None = None) -> tuple[dict, np.ndarray]:
    """Dice per class (mean over images, interval over subjects) and the mean over organs (classes 1..),
    led by what it ``compares`` when given; also the (N, n_classes) scores."""
    scores = dice_per_class(predicted, reference, len(organ_names))
    organs = scores[:, 1:]
    organ_mean = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in organs])
    block = {} if compares is None else {"compares": compares}
    block |= {
        "n_images": len(scores),
        "n_subjects": int(len(np.unique(np.asarray(subjects).astype(str)))),
        "per_class": {name: summarise(scores[:, c], subjects, policy) for c, name in enumerate(organ_names)},
        "mean_organ_dice": summarise(organ_mean, subjects, policy),
    }
    return block, scores
