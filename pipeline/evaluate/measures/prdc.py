"""Precision, recall, density and coverage of generated images (Naeem et al., ICML 2020).

Fidelity and diversity apart: FID mixes "the fakes look real" with "the fakes cover the real
variety" into one number, which cannot tell a generator that collapses onto a few good slices
from one that draws blurry but varied ones. Each real sample X_i gets a ball whose radius r_i is
the distance to its k-th nearest other real sample (k = 5, the paper's choice), likewise each
generated sample Y_j a radius s_j among the generated ones; with N real and M generated samples:

- precision = 1/M  sum_j 1[ exists i: ||Y_j - X_i|| < r_i ]    (fakes inside the real manifold)
- recall    = 1/N  sum_i 1[ exists j: ||X_i - Y_j|| < s_j ]    (reals inside the fake manifold)
- density   = 1/(kM) sum_j sum_i 1[ ||Y_j - X_i|| < r_i ]      (how many real balls hold each fake;
  about 1 when the two distributions agree, above 1 when fakes crowd dense regions; unbounded)
- coverage  = 1/N  sum_i 1[ min_j ||X_i - Y_j|| < r_i ]          (reals with a fake in their ball)

A ball is open (strict ``<``), as in the authors' reference code (clovaai/generative-evaluation-prdc):
it matters only with ties, e.g. k + 1 identical real vectors (blank slices) whose ball has radius
0 and holds nothing, where a closed ball would count a generated copy of them as inside. On
distinct samples the two agree except at the k-th neighbour itself, which the open ball leaves
out (so identical sets have density 1, not (k + 1) / k).

Density and coverage are the paper's outlier-robust replacements of precision and recall: an
outlier among the reals inflates one ball, not the whole estimate. Distances are Euclidean in
whatever feature space the caller passes (pipeline.evaluate.measures.embedding names the one the
generation evaluator uses). Implemented from the paper's definitions with exact pairwise
distances (sets here hold hundreds, not tens of thousands, of images).
"""

from __future__ import annotations

import numpy as np

NEAREST_K = 5
"""The paper's k: its experiments found 5 a good balance of bias and variance for all four."""

MEASURES = ("precision", "recall", "density", "coverage")
#: The measures not bounded above by 1 (density, the mean number of real balls holding a generated
#: sample over k, exceeds 1 where generated samples crowd the dense parts of the real set);
#: the other three are shares, whose intervals are clipped to [0, 1].
UNBOUNDED = ("density",)

DEFINITION = (
    "Naeem et al. 2020, k-nearest-neighbour balls (k = {k}) in the named feature space, Euclidean distance: "
    "precision = share of generated samples inside some real ball; recall = share of real samples inside some "
    "generated ball; density = mean number of real balls holding a generated sample, divided by k; coverage = "
    "share of real samples whose ball holds a generated sample. Ball radius = distance to the k-th nearest other "
    "sample of the same set; balls are open (strictly inside, as the authors' reference code)."
)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances, float64 (squared terms clipped at 0 against round-off)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def kth_neighbour_radii(distances: np.ndarray, k: int = NEAREST_K) -> np.ndarray:
    """From a set's own (n, n) distance matrix: each sample's distance to its k-th nearest other sample."""
    distances = np.array(distances, np.float64)
    np.fill_diagonal(distances, np.inf)  # a sample is not its own neighbour
    return np.partition(distances, k - 1, axis=1)[:, k - 1]


def too_few_samples(n_real: int, n_generated: int, k: int = NEAREST_K) -> str | None:
    """Why PRDC cannot be computed for sets of these sizes, or None."""
    if min(n_real, n_generated) <= k:
        return f"PRDC with k = {k} needs more than {k} samples per set, got {n_real} real and {n_generated} generated"
    return None


class PRDC:
    """The four measures of (N, D) real vs (M, D) generated features.

    The three distance matrices are computed once; calling the object with row indices of each
    set gives the measures on those rows (radii recomputed within the subset), which is what the
    jackknife interval needs. A call on sets of at most k rows returns None.
    """

    def __init__(self, real: np.ndarray, generated: np.ndarray, k: int = NEAREST_K) -> None:
        self.k = k
        self.real_real = pairwise_distances(real, real)
        self.generated_generated = pairwise_distances(generated, generated)
        self.real_generated = pairwise_distances(real, generated)

    def __call__(self, real_rows: np.ndarray | None = None, generated_rows: np.ndarray | None = None) -> dict | None:
        real_rows = np.arange(len(self.real_real)) if real_rows is None else np.asarray(real_rows)
        generated_rows = np.arange(len(self.generated_generated)) if generated_rows is None else np.asarray(generated_rows)
        if too_few_samples(len(real_rows), len(generated_rows), self.k):
            return None
        real_radii = kth_neighbour_radii(self.real_real[np.ix_(real_rows, real_rows)], self.k)
        generated_radii = kth_neighbour_radii(self.generated_generated[np.ix_(generated_rows, generated_rows)], self.k)
        between = self.real_generated[np.ix_(real_rows, generated_rows)]  # (N, M)
        inside_real_balls = between < real_radii[:, None]  # [i, j]: Y_j inside X_i's ball
        inside_generated_balls = between < generated_radii[None, :]  # [i, j]: X_i inside Y_j's ball
        return {
            "precision": float(inside_real_balls.any(axis=0).mean()),
            "recall": float(inside_generated_balls.any(axis=1).mean()),
            "density": float(inside_real_balls.sum() / (self.k * len(generated_rows))),
            "coverage": float((between.min(axis=1) < real_radii).mean()),
        }


def prdc(real: np.ndarray, generated: np.ndarray, k: int = NEAREST_K) -> dict[str, float]:
    """The four measures on whole sets; raises ValueError when a set has <= k rows."""
    problem = too_few_samples(len(real), len(generated), k)
    if problem:
        raise ValueError(problem)
    return PRDC(real, generated, k)()
