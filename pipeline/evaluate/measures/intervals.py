"""95% intervals of every number in metrics.json, with the subject (patient) as the unit.

Slices of one subject are strongly correlated, so the subject is the independent unit of every
interval; resampling slices would give intervals far too narrow. The method follows the kind of
statistic (the measured coverage of each: docs/evaluation.md):

``subject_t`` (per-image means and ratios: SSIM, PSNR, MAE, drops, ratios of sums)
    A Student-t interval from the subjects' contributions to the image-weighted mean, built for
    the few subjects a test split holds (8 by default), where a percentile bootstrap over
    subjects is too narrow (it covered a clustered mean in 88.5% of draws at 8 subjects x 5
    images: its variance is (g - 1) / g of the unbiased one and it uses normal, not t,
    quantiles). With subject totals s_g of the values (ratios: of the numerators), d_g of the
    image counts (ratios: of the denominators), D = sum d_g and the estimate m = sum s_g / D:

    - standard error: the cluster-robust "CR2" variance of the weighted mean (Bell & McCaffrey
      2002), sum_g (s_g - m d_g)^2 / (1 - d_g / D) / D^2: with equal subjects it is exactly the
      variance of the mean of the subject means, s^2 / g; with unequal ones it corrects the
      leverage of the large subjects that the plain sandwich estimator underweights;
    - degrees of freedom: Bell and McCaffrey's, (tr A)^2 / tr(A^2) for the CR2 quadratic form A
      under working independence: g - 1 with equal subjects, fewer with unequal ones (the
      interval widens when one subject holds most images);
    - skewness: Hall's (1992) monotone cubic transformation of the studentised mean,
      f(T) = T + a T^2 + a^2 T^3 / 3 + a / 2, inverted in closed form; the interval is
      [m - se f^-1(q), m - se f^-1(-q)], q = t(0.975, df). a = kappa / 3, kappa the skewness of
      the estimate: gamma sum w_g^3 / (sum w_g^2)^(3/2) with w_g = d_g / D and gamma the sample
      skewness of the subject means s_g / d_g (gamma / sqrt(g) with equal subjects, Hall's
      case). It stretches the side of the long tail (MAE, distances); with gamma = 0 it is
      m +- q se. (The skewness of the subject means, not of their weighted contributions: with
      unequal subjects the latter mixes size into shape and cost 2 points of coverage.)

    It contains m by construction: f^-1(-q) < 0 < f^-1(q) while |a / 2| < q, and kappa is capped
    at +-1 (``MAX_ESTIMATE_SKEWNESS``; 8 equal subjects cannot exceed 0.8).
    Weighting: every image counts once (the image-weighted mean metrics.json reports), so a
    subject with more slices weighs more in the estimate; the interval's unit stays the subject.

``subject_wilson`` (shares: per-image 0/1 values the caller declares, ``share=True``: classifier
    accuracy, shares called as asked; never guessed, since SSIM or Dice of identical images are all 1 too)
    A t interval can leave [0, 1] and collapses to a point when every image of every subject is
    1 (a share of 1.0 from 8 subjects does not show the population is at 1). Wilson's score
    interval on the effective sample size n_eff = m (1 - m) / var_CR2 (the images' count
    divided by the design effect of the subjects; at most the images' count), with the
    t(0.975, df) quantile in place of z (Korn & Graubard 1998's adjustments for a clustered
    proportion). Where the share is 0 or 1 the variance is 0 and n_eff is taken as the number
    of subjects (the images of a subject counted as one), so the interval stays open towards
    the inside: 8 subjects all at 1 give [0.59, 1]. It always lies in [0, 1] and contains m.

``subject_bootstrap`` (pipeline/latent/separation.py's statistics, AUC and balanced accuracy; not per-image means)
    Percentile bootstrap over subjects (``subject_draws``): each replicate draws as many subjects
    as there are, with replacement, with all their images.

``wilson_at_bound`` (AUC and balanced accuracy at 0 or 1: ``bounded_bootstrap_ci``)
    Where every replicate sits at the bound, the percentile interval is the point [1, 1] (or
    [0, 0]): it would pass "AUC >= 0.95" from 8 subjects. These statistics are shares too (of
    pairs ranked right, of images called right per class), so they get what ``subject_wilson``
    gives a share at its bound: Wilson's score interval with n = the number of subjects.

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
from scipy import special, stats

CONFIDENCE = 0.95
METHODS = {
    "subject_t": (
        "Student-t interval of the image-weighted mean over subjects: cluster-robust CR2 standard error "
        "(Bell-McCaffrey), Bell-McCaffrey degrees of freedom (subjects - 1 when all have as many images), Hall's "
        "1992 cubic transformation for the skewness of the subject means; ratios of sums alike with the "
        "denominators as weights; contains the estimate"
    ),
    "subject_wilson": (
        "0/1 values (shares): Wilson score interval on the effective sample size share (1 - share) / CR2 variance "
        "(at most the images; the number of subjects where the share is 0 or 1), t(0.975, Bell-McCaffrey df) in "
        "place of z; within [0, 1], contains the estimate"
    ),
    "newcombe_score": (
        "difference of two shares: Newcombe's hybrid score interval from the two shares' Wilson intervals "
        "(generated images vs reference patients in the memorisation check)"
    ),
    "subject_bootstrap": (
        "percentile bootstrap over subjects: each replicate resamples subjects with replacement (all images of a "
        "drawn subject, counted as often as drawn) and recomputes the statistic (pipeline/latent/separation.py; "
        "AUC and balanced accuracy away from 0 and 1)"
    ),
    "wilson_at_bound": (
        "AUC or balanced accuracy at 0 or 1 (every bootstrap replicate there, so the percentile interval would "
        "be a point): Wilson score interval with n = the number of subjects and t(0.975, subjects - 1), as "
        "subject_wilson takes at a share of 0 or 1"
    ),
    "subject_jackknife": (
        "two-sample delete-one-subject jackknife: each subject of either set left out in turn, variance "
        "sum over sets of (g-1)/g * sum (t_i - mean t)^2, interval estimate +- t(0.975, min(g_a, g_b) - 1) * "
        "sqrt(variance), clipped at the statistic's lower bound; contains the estimate; covers the value at "
        "this sample size (FID/FRD are biased upward at small n)"
    ),
}

BOUND_ROUND_OFF = 1e-9
"""A replicate this near 0 or 1 is there (a weighted AUC of a perfect ranking sums to 0.9999999999999999)."""

MAX_ESTIMATE_SKEWNESS = 1.0
"""Hall's correction is a small-skewness expansion; capped here it keeps f(0) = a / 2 <= 1/6, far inside
+-t(0.975, df), so the interval always contains its estimate (8 equal subjects reach at most 0.8)."""

#: A statistic of two sets, given the row indices of each set that enter it (None: not computable).
SetStatistic = Callable[[np.ndarray, np.ndarray], "float | None"]


@dataclass(frozen=True)
class IntervalPolicy:
    """How intervals are computed; one per evaluation, from the experiment's evaluate knobs."""

    min_subjects: int = 8      # fewer subjects in a set: the interval is null with the reason
    n_boot: int = 1000         # bootstrap replicates where a bootstrap is used (subject_draws)
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


def _subject_totals(
    numerators: np.ndarray, denominators: np.ndarray, subject_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-subject sums of the numerators and of the denominators (subjects in sorted order)."""
    _, image_subject = np.unique(np.asarray(subject_ids).astype(str), return_inverse=True)
    totals = np.bincount(image_subject, weights=np.asarray(numerators, np.float64))
    sizes = np.bincount(image_subject, weights=np.asarray(denominators, np.float64))
    return totals, sizes


@dataclass(frozen=True)
class _Linearised:
    """The estimate sum(totals) / sum(sizes), its CR2 standard error, Bell-McCaffrey df and its skewness."""

    estimate: float
    standard_error: float
    df: float
    estimate_skewness: float


def _linearise(totals: np.ndarray, sizes: np.ndarray) -> _Linearised:
    """CR2 variance of a ratio of subject sums (intercept-only weighted regression), its Bell-McCaffrey
    degrees of freedom under working independence, and the skewness of the estimate.

    With D = sum d_g and leverages h_g = d_g / D: var = sum (s_g - m d_g)^2 / (1 - h_g) / D^2. The
    quadratic form A = (I - H) B (I - H), B = blockdiag(1 / (1 - h_g) / D^2), has
    tr A = b1 - b2 / D and tr A^2 = sum c_g^2 d_g^2 / D^4 - 2 sum c_g^2 d_g^3 / D^5 + b2^2 / D^2
    (c_g = 1 / (1 - h_g), b1 = sum c_g d_g / D^2, b2 = sum c_g d_g^2 / D^2); df = (tr A)^2 / tr A^2.
    """
    total_size = sizes.sum()
    estimate = float(totals.sum() / total_size)
    inflation = 1.0 / (1.0 - sizes / total_size)
    residuals = totals - estimate * sizes
    variance = float(np.sum(inflation * residuals**2)) / total_size**2
    b1 = np.sum(inflation * sizes) / total_size**2
    b2 = np.sum(inflation * sizes**2) / total_size**2
    trace_a = b1 - b2 / total_size
    trace_a2 = (np.sum(inflation**2 * sizes**2) / total_size**4
                - 2.0 * np.sum(inflation**2 * sizes**3) / total_size**5 + b2**2 / total_size**2)
    present = sizes > 0
    deviations = totals[present] / sizes[present]
    deviations = deviations - deviations.mean()
    m2, m3 = np.mean(deviations**2), np.mean(deviations**3)
    weights = sizes / total_size
    skewness = float(m3 / m2**1.5) * np.sum(weights**3) / np.sum(weights**2) ** 1.5 if m2 > 0 else 0.0
    skewness = float(np.clip(skewness, -MAX_ESTIMATE_SKEWNESS, MAX_ESTIMATE_SKEWNESS))
    return _Linearised(estimate, float(np.sqrt(variance)), float(trace_a**2 / trace_a2), float(skewness))


def _t_quantile(df: float) -> float:
    """t(0.975, df); scipy.special's function directly, ~100x cheaper than stats.t.ppf per call."""
    return float(special.stdtrit(df, 0.5 + CONFIDENCE / 2.0))


def _hall_t_interval(fit: _Linearised) -> tuple[float, float]:
    """[m - se f^-1(q), m - se f^-1(-q)] with Hall's (1992) f(T) = T + a T^2 + a^2 T^3 / 3 + a / 2,
    a = (the estimate's skewness) / 3; f^-1(y) = ((1 + 3 a (y - a / 2))^(1/3) - 1) / a (y when a = 0)."""
    q = _t_quantile(fit.df)
    a = fit.estimate_skewness / 3.0

    def inverse(y: float) -> float:
        return (float(np.cbrt(1.0 + 3.0 * a * (y - a / 2.0))) - 1.0) / a if abs(a) > 1e-12 else y - a / 2.0

    return fit.estimate - fit.standard_error * inverse(q), fit.estimate - fit.standard_error * inverse(-q)


def _wilson_score(share: float, n_eff: float, df: float) -> tuple[float, float]:
    """Wilson's score interval of a share on ``n_eff`` units with the t(0.975, ``df``) quantile in place of z."""
    spread = share * (1.0 - share)
    q2 = _t_quantile(df) ** 2
    centre = (share + q2 / (2.0 * n_eff)) / (1.0 + q2 / n_eff)
    half = np.sqrt(q2) * np.sqrt(spread / n_eff + q2 / (4.0 * n_eff**2)) / (1.0 + q2 / n_eff)
    # round-off at a share of exactly 0 or 1 must not leave the estimate outside
    return min(centre - half, share), max(centre + half, share)


def _wilson_interval(fit: _Linearised, n_images: float, n_at_boundary: float) -> tuple[float, float]:
    """Wilson's score interval on the effective sample size (see the module docstring), t quantile;
    ``n_at_boundary``: the effective size taken when the share is 0 or 1 (no variance to estimate it)."""
    share = fit.estimate
    spread = share * (1.0 - share)
    n_eff = min(spread / fit.standard_error**2, n_images) if spread > 0 and fit.standard_error > 0 else n_at_boundary
    return _wilson_score(share, n_eff, fit.df)


def bounded_bootstrap_ci(replicates: np.ndarray, estimate: float, n_subjects: int) -> dict:
    """Interval of a statistic in [0, 1] (AUC, balanced accuracy) from its subject-bootstrap replicates.

    The percentile interval (``subject_bootstrap``), widened to the estimate where it misses it.
    At a bound (the estimate 0 or 1 and every replicate with it: every pair ranked right, every
    image called right) that interval is [1, 1] whatever the number of subjects, and would say the
    population is at 1. There, as ``share_ci`` does for a share of 0 or 1, the interval is Wilson's
    score interval with n = the number of subjects (a subject's images and pairs counted as one)
    and t(0.975, subjects - 1): ``wilson_at_bound``; 8 subjects at 1 give [0.59, 1].
    """
    replicates = np.asarray(replicates, np.float64)
    replicates = replicates[np.isfinite(replicates)]
    if estimate in (0.0, 1.0) and np.all(np.abs(replicates - estimate) <= BOUND_ROUND_OFF):
        low, high = _wilson_score(estimate, float(n_subjects), float(n_subjects - 1))
        return _result([float(low), float(high)], "wilson_at_bound")
    if replicates.size == 0:
        return _result(None, "subject_bootstrap", "no bootstrap replicate had a finite value")
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return _result([float(min(low, estimate)), float(max(high, estimate))], "subject_bootstrap")


def ratio_ci(
    numerators: np.ndarray,
    denominators: np.ndarray,
    subject_ids: np.ndarray,
    policy: IntervalPolicy,
    bounds: tuple[float, float] | None = None,
) -> dict:
    """``subject_t`` interval of sum(numerators) / sum(denominators), the subject as the unit.

    ``bounds``: the range the statistic cannot leave (e.g. (0, 1) for a share of a total); the
    interval is clipped to it.
    """
    reason = too_few_subjects(policy, subject_ids)
    if reason:
        return _result(None, "subject_t", reason)
    totals, sizes = _subject_totals(numerators, denominators, subject_ids)
    if np.any(sizes < 0) or sizes.sum() <= 0:
        return _result(None, "subject_t", "the denominators' sum is not positive (or a subject's is negative)")
    fit = _linearise(totals, sizes)
    low, high = _hall_t_interval(fit)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return _result([float(low), float(high)], "subject_t")


def mean_ci(values: np.ndarray, subject_ids: np.ndarray, policy: IntervalPolicy, share: bool = False) -> dict:
    """Interval of the mean over images with a finite value (PSNR of identical images is left out):
    ``subject_t``, or ``subject_wilson`` for a ``share`` (values 0 or 1: classifier calls, accuracy).

    A share is declared by the caller, never guessed from the values: SSIM or Dice of identical
    images are all 1 too, and there the zero-width t interval [1, 1] is the right one.
    """
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    if share:
        return share_ci(values[finite], np.asarray(subject_ids)[finite], policy)
    if not finite.any():
        return _result(None, "subject_t", "no finite value")
    return ratio_ci(values[finite], np.ones(int(finite.sum())), np.asarray(subject_ids)[finite], policy)


def share_ci(values: np.ndarray, subject_ids: np.ndarray, policy: IntervalPolicy, rare_events: bool = False) -> dict:
    """``subject_wilson`` interval of the share of 0/1 ``values``, the subject as the unit.

    Where every value is 0 (or 1) there is no variance to measure the subjects' clustering by; the
    effective size is then the number of subjects (the images of a subject counted as one: right for
    outcomes that a subject's images share, like a classifier's call), or with ``rare_events`` the
    number of images (Korn & Graubard's design effect 1: right for events with no reason to come in
    clusters, like a new patient's slice that happens to be a near copy of a training slice; one
    such cluster makes the share non-zero and brings the clustered estimate back).
    """
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return _result(None, "subject_wilson", "no finite value")
    if not np.all((values == 0.0) | (values == 1.0)):
        raise ValueError(f"a share's values must be 0 or 1, got {np.unique(values)[:5]} ...")
    reason = too_few_subjects(policy, subject_ids)
    if reason:
        return _result(None, "subject_wilson", reason)
    totals, sizes = _subject_totals(values, np.ones(values.size), subject_ids)
    at_boundary = float(values.size) if rare_events else float(len(sizes))
    low, high = _wilson_interval(_linearise(totals, sizes), float(values.size), at_boundary)
    return _result([float(low), float(high)], "subject_wilson")


def difference_of_shares_ci(first: dict, second: dict) -> dict:
    """Newcombe's (1998, method 10) hybrid score interval of first - second from the two shares'
    own score intervals ({"value", "ci95"} each; independent samples): with p_i in [l_i, u_i],
    [d - sqrt((p1 - l1)^2 + (u2 - p2)^2), d + sqrt((u1 - p1)^2 + (p2 - l2)^2)]. Inherits the
    single intervals' respect for the range, so it behaves at shares of 0, where a Wald interval
    of the difference collapses."""
    if first["ci95"] is None or second["ci95"] is None:
        return {"value": first["value"] - second["value"]} | _result(
            None, "newcombe_score", first.get("ci95_reason") or second.get("ci95_reason"))
    (p1, (l1, u1)), (p2, (l2, u2)) = (first["value"], first["ci95"]), (second["value"], second["ci95"])
    difference = p1 - p2
    low = difference - float(np.hypot(p1 - l1, u2 - p2))
    high = difference + float(np.hypot(u1 - p1, p2 - l2))
    return {"value": difference} | _result([low, high], "newcombe_score")


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
    upper_bound: float | None = None,
) -> dict:
    """Jackknife interval of ``statistic(real_rows, generated_rows)`` (see the module docstring).

    ``statistic`` gets index arrays into the two sets (so it can reuse features or kernel matrices
    computed once); ``lower_bound`` / ``upper_bound`` clip the interval to the statistic's range
    (0 for a distance; 0 and 1 for a share such as PRDC's precision, recall and coverage, whose
    symmetric t interval can otherwise reach past 1). Clipping to a range the true value cannot
    leave changes no interval's coverage.
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
    if upper_bound is not None:
        low, high = min(low, upper_bound), min(high, upper_bound)
    return _result([float(low), float(high)], "subject_jackknife")


def _is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))


def interval_problem(ci, point) -> str | None:
    """What is wrong with one interval ``ci`` beside its estimate ``point`` (None: no estimate
    known), or None: not two finite numbers, reversed, or not containing the estimate (beyond
    round-off)."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(_is_finite_number(x) for x in ci):
        return f"{ci} is not two finite numbers"
    if ci[0] > ci[1]:
        return f"{ci} is reversed (low above high)"
    if point is not None and not (ci[0] <= point <= ci[1]) and not np.isclose(point, ci, rtol=1e-9, atol=1e-12).any():
        return f"{ci} does not contain the estimate {point}"
    return None


def interval_problems(metrics: dict, min_subjects: int | None = None) -> list[str]:
    """Every interval in a metrics dict that is not two finite numbers in order, that does not
    contain its point estimate, or (with
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
                    problem = interval_problem(ci, point)
                    if problem is None and point is None:
                        problem = "no point estimate beside the interval"
                    if problem is not None:
                        problems.append(f"{path}/{key}: {problem}")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(metrics, "")
    return problems
