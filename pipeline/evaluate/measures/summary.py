"""Summary of per-image values: mean, std, counts and the subject-bootstrap interval of the mean.

The block every per-image measure (SSIM, PSNR, Dice, a classifier's accuracy, ...) is reported
as in metrics.json; the interval follows pipeline.evaluate.measures.intervals.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.measures import intervals
from pipeline.evaluate.measures.intervals import IntervalPolicy


def summarise(values: np.ndarray, subject_ids: np.ndarray, policy: IntervalPolicy) -> dict:
    """Mean / std (ddof 0) / n of per-image values with the subject-bootstrap 95% interval of the mean.

    Infinities (identical images in PSNR) are counted apart and left out of mean, std and interval.
    """
    finite = values[np.isfinite(values)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "n": int(values.size),
        "n_infinite": int(values.size - finite.size),
        "n_subjects": int(len(np.unique(np.asarray(subject_ids).astype(str)))),
    } | (intervals.mean_ci(values, subject_ids, policy) if finite.size else
         {"ci95": None, "ci95_reason": "no finite value", "ci_method": "subject_bootstrap"})
