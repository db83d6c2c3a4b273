"""95% percentile bootstrap intervals that resample subjects, not slices.

Slices of one subject are strongly correlated, so resampling slices would give intervals far
too narrow; the subject is the independent unit. Each replicate draws as many subjects as there
are, with replacement, and takes every image of each drawn subject (a subject drawn twice
counts twice). With fewer than 2 subjects there is nothing to resample and the interval is null.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

CONFIDENCE = 0.95
METHOD = (
    "percentile bootstrap, 95%: each replicate resamples subjects with replacement (all images of a drawn "
    "subject, counted as often as it is drawn) and recomputes the statistic; per-image metrics are the "
    "image-weighted mean (ratios: ratio of sums); distribution distances resample the subjects of both "
    "sets independently; null when a set has fewer than 2 subjects"
)


def subject_draws(subject_ids: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot, n_subjects) counts of how often each subject is drawn, and each image's subject index."""
    subjects, image_subject = np.unique(np.asarray(subject_ids).astype(str), return_inverse=True)
    picks = rng.integers(0, len(subjects), size=(n_boot, len(subjects)))
    counts = np.zeros((n_boot, len(subjects)), dtype=np.float64)
    np.add.at(counts, (np.arange(n_boot)[:, None], picks), 1.0)
    return counts, image_subject


def _interval(replicates: np.ndarray) -> list[float] | None:
    replicates = replicates[np.isfinite(replicates)]
    if replicates.size == 0:
        return None
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return [float(low), float(high)]


def ratio_ci(
    numerators: np.ndarray, denominators: np.ndarray, subject_ids: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> list[float] | None:
    """Interval of sum(numerators) / sum(denominators) over the images of resampled subjects."""
    subject_ids = np.asarray(subject_ids)
    if len(np.unique(subject_ids.astype(str))) < 2:
        return None
    counts, image_subject = subject_draws(subject_ids, n_boot, np.random.default_rng(seed))
    n_subjects = counts.shape[1]
    num = np.bincount(image_subject, weights=np.asarray(numerators, np.float64), minlength=n_subjects)
    den = np.bincount(image_subject, weights=np.asarray(denominators, np.float64), minlength=n_subjects)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _interval((counts @ num) / (counts @ den))


def mean_ci(values: np.ndarray, subject_ids: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """Interval of the mean over images with a finite value (PSNR of identical images is left out)."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    return ratio_ci(np.where(finite, values, 0.0), finite.astype(np.float64), subject_ids, n_boot, seed)


def two_set_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float | None],
    real: np.ndarray,
    real_subjects: np.ndarray,
    generated: np.ndarray,
    generated_subjects: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[float] | None:
    """Interval of ``statistic(real_rows, generated_rows)`` with the subjects of both sets resampled.

    A replicate where the statistic is None (e.g. too few images) is left out.
    """
    if min(len(np.unique(np.asarray(s).astype(str))) for s in (real_subjects, generated_subjects)) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = [subject_draws(subjects, n_boot, rng) for subjects in (real_subjects, generated_subjects)]
    replicates = np.full(n_boot, np.nan)
    for b in range(n_boot):
        rows = [np.repeat(np.arange(len(image_subject)), counts[b][image_subject].astype(int))
                for counts, image_subject in draws]
        value = statistic(real[rows[0]], generated[rows[1]])
        if value is not None:
            replicates[b] = value
    return _interval(replicates)
