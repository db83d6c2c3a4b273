"""Diversity: do generated images differ from one another as much as real images of different patients do?

A generator that collapses onto one image (or a few) can still sit inside the real manifold
(high precision); its samples then lie close to each other. The measure is the mean pairwise
Euclidean distance within a set, in a named feature space, over pairs of different subjects
(two slices of one patient are near each other for reasons a generator cannot share; each
generated image is its own subject), and the ratio generated / real:

    ratio = mean_{i<j, s_i != s_j} ||y_i - y_j|| / mean_{i<j, t_i != t_j} ||x_i - x_j||

1 when the samples spread like the real images, near 0 for mode collapse, above 1 for samples
more spread than the data (e.g. noise). Each mean is a sum over pairs divided by their count,
so a subset of rows (the jackknife's) is scored from the distance matrices computed once; the
ratio's interval is the two-set subject jackknife of pipeline.evaluate.measures.intervals.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.measures import intervals
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.prdc import pairwise_distances

DEFINITION = (
    "mean pairwise Euclidean distance within a set in the named feature space, over pairs of images of different "
    "subjects (each generated image its own subject); ratio = generated mean / real mean (1: as diverse as real "
    "images of different patients; near 0: collapse onto one image)"
)


class _WithinSet:
    """Pairwise distances of one set and which pairs join different subjects."""

    def __init__(self, features: np.ndarray, subjects: np.ndarray) -> None:
        self.distances = pairwise_distances(features, features)
        subjects = np.asarray(subjects).astype(str)
        self.different = subjects[:, None] != subjects[None, :]

    def mean(self, rows: np.ndarray | None = None) -> float:
        """Mean distance over the pairs of ``rows`` (all rows when None) of different subjects; nan without one."""
        if rows is None:
            distances, different = self.distances, self.different
        else:
            distances, different = self.distances[np.ix_(rows, rows)], self.different[np.ix_(rows, rows)]
        n_pairs = different.sum()
        return float((distances * different).sum() / n_pairs) if n_pairs else float("nan")


class MeanPairwiseDistance:
    """Mean pairwise distances of a real and a generated feature set and their ratio."""

    def __init__(self, real: np.ndarray, real_subjects: np.ndarray, generated: np.ndarray,
                 generated_subjects: np.ndarray) -> None:
        self.real = _WithinSet(real, real_subjects)
        self.generated = _WithinSet(generated, generated_subjects)
        self.real_subjects, self.generated_subjects = real_subjects, generated_subjects

    def __call__(self, real_rows: np.ndarray, generated_rows: np.ndarray) -> float:
        """The ratio on a subset of rows of each set (the jackknife's statistic)."""
        real = self.real.mean(real_rows)
        return self.generated.mean(generated_rows) / real if real > 0 else float("nan")

    def ratio(self) -> float:
        real = self.real.mean()
        return self.generated.mean() / real if real > 0 else float("nan")

    def block(self, policy: IntervalPolicy, feature_space: str) -> dict:
        """The metrics.json block: both means, the ratio with its subject-jackknife interval."""
        ratio = self.ratio()
        reason = None if np.isfinite(ratio) else "fewer than two subjects in a set, or identical real images"
        block = {
            "definition": DEFINITION,
            "feature_space": feature_space,
            "real_mean_distance": self.real.mean(),
            "generated_mean_distance": self.generated.mean(),
            "value": ratio if reason is None else None,
            "reason": reason,
        }
        if reason is not None:
            return block | {"ci95": None, "ci95_reason": reason, "ci_method": "subject_jackknife"}
        return block | intervals.two_set_ci(self, self.real_subjects, self.generated_subjects, policy, lower_bound=0.0)
