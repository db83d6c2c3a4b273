"""Summary of per-image values: mean, std, counts and the subject-level interval of the mean.

The block every per-image measure (SSIM, PSNR, Dice, a classifier's accuracy, ...) is reported
as in metrics.json; the interval follows pipeline.evaluate.measures.intervals.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.measures import intervals
from pipeline.evaluate.measures.intervals import IntervalPolicy


def summarise(values: np.ndarray, subject_ids: np.ndarray, policy: IntervalPolicy, share: bool = False) -> dict:
    """Mean / std (ddof 0) / n of per-image values with the 95% interval of the mean over subjects
    (``subject_t``; ``subject_wilson`` when the values are a ``share``, 0 or 1 each: intervals.mean_ci).

    Infinities (identical images in PSNR) are counted apart and left out of mean, std and interval.
    """
    finite = values[np.isfinite(values)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "n": int(values.size),
        "n_infinite": int(values.size - finite.size),
        "n_subjects": int(len(np.unique(np.asarray(subject_ids).astype(str)))),
    } | intervals.mean_ci(values, subject_ids, policy, share=share)


def balanced_accuracy(correct: np.ndarray, labels: np.ndarray, subject_ids: np.ndarray, policy: IntervalPolicy) -> dict:
    """Balanced accuracy (the mean over classes of the share of that class called right) with the
    subject-bootstrap 95% interval: each replicate weighs every image by how often its subject
    was drawn, so a patient's slices of both classes move together; at 0 or 1, where every
    replicate is too, Wilson's interval on the subjects (intervals.bounded_bootstrap_ci). Null
    with the reason when a class is absent."""
    correct, labels = np.asarray(correct, np.float64), np.asarray(labels)
    classes = np.unique(labels)
    block = {"value": None, "n": int(correct.size), "n_subjects": intervals._n_subjects(subject_ids),
             "n_per_class": {str(c): int((labels == c).sum()) for c in classes}, "ci_method": "subject_bootstrap"}
    if len(classes) < 2:
        reason = f"the images hold class {classes.tolist()} only: no balanced accuracy"
        return block | {"reason": reason, "ci95": None, "ci95_reason": reason}
    block |= {"value": float(np.mean([correct[labels == c].mean() for c in classes])), "reason": None}
    reason = intervals.too_few_subjects(policy, subject_ids)
    if reason:
        return block | {"ci95": None, "ci95_reason": reason}
    counts, image_subject = intervals.subject_draws(subject_ids, policy.n_boot, np.random.default_rng(policy.seed))
    n_subjects = counts.shape[1]
    recalls = []
    for c in classes:
        of_class = labels == c
        right = np.bincount(image_subject[of_class], weights=correct[of_class], minlength=n_subjects)
        total = np.bincount(image_subject[of_class], minlength=n_subjects).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            recalls.append((counts @ right) / (counts @ total))
    return block | intervals.bounded_bootstrap_ci(np.mean(recalls, axis=0), block["value"], n_subjects)
