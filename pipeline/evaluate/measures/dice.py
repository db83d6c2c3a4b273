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


CHANGED_DEFINITION = ("Dice_c on the changed pixels only: with C the pixels whose class the perturbation changed "
                      "(perturbed map != source map), 2|P_c & R_c & C| / (|P_c & C| + |R_c & C|), R the perturbed map; "
                      "NaN when c is absent from both inside C. 'follows_source' is the share of changed pixels the "
                      "segmenter reads as the SOURCE map's class (the image kept the old anatomy)")


def changed_pixel_dice(predicted: np.ndarray, perturbed: np.ndarray, source: np.ndarray, n_classes: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dice per class counted on the pixels whose class the perturbation changed (CHANGED_DEFINITION).

    Returns (N, n_classes) Dice, (N,) share of changed pixels read as the perturbed class, (N,)
    share read as the source class; NaN rows where a perturbation changed nothing. Unchanged
    pixels are the source map's anatomy, which a generator can follow without following the
    perturbation: counting them would credit it for what it already knew.
    """
    predicted, perturbed, source = (np.asarray(a) for a in (predicted, perturbed, source))
    if not predicted.shape == perturbed.shape == source.shape:
        raise ValueError(f"predicted {predicted.shape}, perturbed {perturbed.shape} and source {source.shape} "
                         "maps differ in shape")
    changed = perturbed != source
    outside = n_classes  # a class no map holds: pixels outside the changed set never count
    scores = dice_per_class(np.where(changed, predicted, outside), np.where(changed, perturbed, outside), n_classes)
    n_changed = changed.reshape(len(changed), -1).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        follows_perturbed = np.where(n_changed > 0, (changed & (predicted == perturbed)).reshape(len(changed), -1)
                                     .sum(axis=1) / np.maximum(n_changed, 1), np.nan)
        follows_source = np.where(n_changed > 0, (changed & (predicted == source)).reshape(len(changed), -1)
                                  .sum(axis=1) / np.maximum(n_changed, 1), np.nan)
    return scores, follows_perturbed, follows_source
