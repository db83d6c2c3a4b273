"""95% intervals of every number in metrics.json, with the subject (patient) as the unit.

Slices of one subject are strongly correlated, so the subject is the independent unit of every
interval; resampling slices would give intervals far too narrow. Two methods, chosen by the kind
of statistic:

``subject_bootstrap`` (per-image metrics: SSIM, PSNR, MAE, classifier shares, ratios)
    Percentile bootstrap: each replicate draws as many subjects as there are, with replacement,
    takes every image of each drawn subject (counted as often as it is drawn) and recomputes the
    image-weighted mean (ratios: ratio of sums). Valid here because a mean of per-image values is
    unchanged in kind by a duplicated row.

``subject_jackknife`` (set-level statistics: FID, KID, FRD, PRDC, any distance between two sets)
    A bootstrap is wrong for these: a duplicated row shrinks a fitted covariance and pairs a row
    with its own copy in the kernel sums of KID, so the replicates shift away from the estimate
    and their percentile interval can exclude it (and say that two identical distributions
    differ). The delete-one-subject jackknife never duplicates a row. Each set's subjects are
    left out one at a time (the other set whole); with g subjects and replicates t_i of a set,
    its variance share is (g - 1) / g * sum_i (t_i - mean t)^2, and the two shares add (the sets
    are independent). By the Efron-Stein inequality this variance estimate is, in expectation,
    at least the statistic's variance, so the interval errs wide rather than narrow. The
    interval is estimate +- t(0.975, df) * sqrt(variance) with df = min(g_a, g_b) - 1 (Student's
    t, not 1.96, because g is small), clipped at a statistic's lower bound (0 for a distance);
    it contains the estimate by construction. Sets of more than ``max_groups`` units (e.g.
    thousands of generated images, each its own unit) are split into ``max_groups`` seeded groups
    and a group is left out at a time (delete-a-group jackknife), which bounds the cost.
    What it covers: the statistic's value at this sample size. FID and FRD are biased upward at
    small n (Fréchet distances of covariances fitted from few samples); where that bias is small
    next to the standard error the interval covers the population value at close to 95% (tested),
    otherwise compare runs only at equal n. KID is unbiased at any n.

Either way an interval is null, with the reason, when a set has fewer than ``min_subjects``
subjects (``experiments.<name>.evaluate.min_subjects``): with 2 or 3 subjects a resampling
interval has too few distinct resamples to mean anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
METHODS = {
    "subject_bootstrap": (
        "percentile bootstrap over subjects: each replicate resamples subjects with replacement (all images of a "
        "drawn subject, counted as often as drawn) and recomputes the image-weighted mean (ratios: ratio of sums)"
    ),
    "subject_jackknife": (
        "two-sample delete-one-subject jackknife: each subject of either set left out in turn, variance "
        "sum over sets of (g-1)/g * sum (t_i - mean t)^2, interval estimate +- t(0.975, min(g_a, g_b) - 1) * "
        "sqrt(variance), clipped at the statistic's lower bound; contains the estimate; covers the value at "
        "this sample size (FID/FRD are biased upward at small n)"
    ),
}

#: A statistic of two sets, given the row indices of each set that enter it (None: not computable).
SetStatistic = Callable[[np.ndarray, np.ndarray], "float | None"]


@dataclass(frozen=True)
class IntervalPolicy:
    """How intervals are computed; one per evaluation, from the experiment's evaluate knobs."""

    min_subjects: int = 8      # fewer subjects in a set: the interval is null with the reason
    n_boot: int = 1000         # bootstrap replicates (per-image metrics)
    seed: int = 0              # bootstrap and jackknife grouping seed
    max_groups: int = 100      # jackknife: at most this many left-out groups per set

    def describe(self) -> dict:
        return {"confidence": CONFIDENCE, "methods": METHODS, "min_subjects": self.min_subjects,
                "n_boot": self.n_boot, "seed": self.seed, "jackknife_max_groups": self.max_groups}


def _result(ci95: list[float] | None, method: str, reason: str | None = None) -> dict:
    return {"ci95": ci95, "ci95_reason": None if ci95 is not None else reason, "ci_method": method}


def _n_subjects(subject_ids: np.ndarray) -> int:
    return len(np.unique(np.asarray(subject_ids).astype(str)))


def too_few_subjects(policy: IntervalPolicy, *subject_sets: np.ndarray) -> str | None:
    """The reason an interval over these subject sets is not given, or None when it is."""
    counts = [_n_subjects(s) for s in subject_sets]
    if min(counts) < policy.min_subjects:
        return (f"{min(counts)} subjects, fewer than evaluate.min_subjects = {policy.min_subjects}: "
                "too few for a resampling interval")
    return None


def subject_draws(subject_ids: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot, n_subjects) counts of how often each subject is drawn, and each image's subject index."""
    subjects, image_subject = np.unique(np.asarray(subject_ids).astype(str), return_inverse=True)
    picks = rng.integers(0, len(subjects), size=(n_boot, len(subjects)))
    counts = np.zeros((n_boot, len(subjects)), dtype=np.float64)
    np.add.at(counts, (np.arange(n_boot)[:, None], picks), 1.0)
    return counts, image_subject


def ratio_ci(numerators: np.ndarray, denominators: np.ndarray, subject_ids: np.ndarray, policy: IntervalPolicy) -> dict:
    """Bootstrap interval of sum(numerators) / sum(denominators) over the images of resampled subjects."""
    reason = too_few_subjects(policy, subject_ids)
    if reason:
        return _result(None, "subject_bootstrap", reason)
    counts, image_subject = subject_draws(subject_ids, policy.n_boot, np.random.default_rng(policy.seed))
    n_subjects = counts.shape[1]
    num = np.bincount(image_subject, weights=np.asarray(numerators, np.float64), minlength=n_subjects)
    den = np.bincount(image_subject, weights=np.asarray(denominators, np.float64), minlength=n_subjects)
    with np.errstate(divide="ignore", invalid="ignore"):
        replicates = (counts @ num) / (counts @ den)
    replicates = replicates[np.isfinite(replicates)]
    if replicates.size == 0:
        return _result(None, "subject_bootstrap", "no replicate had a finite value")
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return _result([float(low), float(high)], "subject_bootstrap")


def mean_ci(values: np.ndarray, subject_ids: np.ndarray, policy: IntervalPolicy) -> dict:
    """Bootstrap interval of the mean over images with a finite value (PSNR of identical images is left out)."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    return ratio_ci(np.where(finite, values, 0.0), finite.astype(np.float64), subject_ids, policy)


def _leave_out_groups(subject_ids: np.ndarray, policy: IntervalPolicy) -> list[np.ndarray]:
    """Row indices of each jackknife group: one subject each, or ``max_groups`` seeded groups of subjects."""
    subjects, image_subject = np.unique(np.asarray(subject_ids).astype(str), return_inverse=True)
    group_of_subject = np.arange(len(subjects))
    if len(subjects) > policy.max_groups:
        order = np.random.default_rng(policy.seed).permutation(len(subjects))
        group_of_subject[order] = np.arange(len(subjects)) % policy.max_groups
    group_of_row = group_of_subject[image_subject]
    return [np.flatnonzero(group_of_row != g) for g in np.unique(group_of_row)]


def two_set_ci(
    statistic: SetStatistic,
    real_subjects: np.ndarray,
    generated_subjects: np.ndarray,
    policy: IntervalPolicy,
    lower_bound: float | None = None,
) -> dict:
    """Jackknife interval of ``statistic(real_rows, generated_rows)`` (see the module docstring).

    ``statistic`` gets index arrays into the two sets (so it can reuse features or kernel matrices
    computed once); ``lower_bound`` clips the interval (0 for a distance).
    """
    reason = too_few_subjects(policy, real_subjects, generated_subjects)
    if reason:
        return _result(None, "subject_jackknife", reason)
    all_real, all_generated = np.arange(len(real_subjects)), np.arange(len(generated_subjects))
    estimate = statistic(all_real, all_generated)
    if estimate is None or not np.isfinite(estimate):
        return _result(None, "subject_jackknife", "the statistic is not computable on the full sets")
    variance, groups = 0.0, []
    for side, subject_ids in (("real", real_subjects), ("generated", generated_subjects)):
        kept = _leave_out_groups(subject_ids, policy)
        replicates = np.array([
            statistic(rows, all_generated) if side == "real" else statistic(all_real, rows) for rows in kept
        ], dtype=np.float64)
        if not np.all(np.isfinite(replicates)):
            return _result(None, "subject_jackknife", f"the statistic is not computable with a {side} subject left out")
        g = len(kept)
        variance += (g - 1) / g * float(np.sum((replicates - replicates.mean()) ** 2))
        groups.append(g)
    half_width = float(stats.t.ppf(0.5 + CONFIDENCE / 2.0, df=min(groups) - 1)) * np.sqrt(variance)
    low, high = estimate - half_width, estimate + half_width
    if lower_bound is not None:
        low, high = max(low, lower_bound), max(high, lower_bound)
    return _result([float(low), float(high)], "subject_jackknife")


def interval_problems(metrics: dict, min_subjects: int | None = None) -> list[str]:
    """Every interval in a metrics dict that does not contain its point estimate, or (with
    ``min_subjects``) that sits beside an ``n_subjects`` below it, as 'path: ...' lines.

    The point estimate of ``ci95`` is the block's ``value`` (else ``mean``); ``ci95_<name>`` goes with
    ``<name>`` (``ci95_inside`` with ``share_inside``, ``ci95_drop`` with ``drop``).
    """
    problems: list[str] = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            n_subjects = node.get("n_subjects")
            for key, ci in node.items():
                if (key.startswith("ci95") and isinstance(ci, list) and min_subjects is not None
                        and isinstance(n_subjects, int) and n_subjects < min_subjects):
                    problems.append(f"{path}/{key}: an interval over {n_subjects} subjects, fewer than {min_subjects}")
                if key.startswith("ci95") and isinstance(ci, list):
                    name = key[len("ci95_"):] if key != "ci95" else None
                    candidates = [name, f"share_{name}"] if name else ["value", "mean"]
                    point = next((node[c] for c in candidates if c and isinstance(node.get(c), (int, float))), None)
                    if point is None:
                        problems.append(f"{path}/{key}: no point estimate beside the interval")
                    elif not (ci[0] <= point <= ci[1]) and not np.isclose(point, ci, rtol=1e-9, atol=1e-12).any():
                        problems.append(f"{path}/{key}: {ci} does not contain the estimate {point}")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(metrics, "")
    return problems
