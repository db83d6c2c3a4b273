"""Do healthy and cardiomegaly codes separate linearly in W? (report 004, Fig. 2A)

The codes are those the inversion stage found by latent optimisation for held-out (validation
and test, never G's training) images of both classes. Those subjects are split into a fitting part and a scoring part
(``fit_fraction`` of each class's subjects, seeded; a subject's images stay together, a subject
counted in the class of most of its images). Linear discriminant analysis (scikit-learn,
``solver`` / ``shrinkage`` knobs; shrinkage matters when codes have more dimensions than
images) is fitted on the fitting part; its unit normal v projects every code to one number.

Separation (the report's measure): |mean_1 - mean_0| / ((std_0 + std_1) / 2) of the projections,
std with ddof 1. The report's 4.8 was measured on the codes LDA was fitted on, which flatters
it (LDA picks the direction that separates those very codes); both are given here, the fitting
set's and the held-out set's. Intervals: subject bootstrap (``n_boot`` resamples of subjects,
percentile 95%) with the direction held fixed, so they show the sampling spread of the measure
on that set, not the spread of refitting LDA. Held-out accuracy (LDA's own threshold) and AUC
(of the projection) with subject-bootstrap intervals too.

Codes in W (all layers equal) enter as their one w; W+ codes are flattened. ``v`` is saved for
the edit stage (its second choice of direction). Fewer than two codes of a class in the
fitting (scoring) part leaves the fitting (held-out) measures null with the reason, not an error:
a small real subset may hold few cardiomegaly images.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import ConfigError, PipelineError

log = logging.getLogger("pipeline.latent.separation")

DEFAULT_SETTINGS: dict[str, Any] = {
    "fit_fraction": 0.5,        # share of each class's test subjects LDA is fitted on
    "solver": "lsqr",           # scikit-learn LDA solver: lsqr | eigen | svd
    "shrinkage": "auto",        # auto (Ledoit-Wolf) | a number in [0, 1] | none (svd has none)
}
SEPARATION_DEFINITION = ("|mean_1 - mean_0| / ((std_0 + std_1) / 2) of the codes' projections on LDA's unit "
                         "normal (std ddof 1), classes 0 healthy and 1 cardiomegaly")


def code_features(codes: np.ndarray) -> np.ndarray:
    """(n, num_ws, w_dim) codes -> (n, w_dim) when every layer holds the same w, else flattened."""
    codes = np.asarray(codes, np.float64)
    if codes.ndim == 2:
        return codes
    if np.allclose(codes, codes[:, :1]):
        return codes[:, 0]
    return codes.reshape(len(codes), -1)


def separation(projections: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The report's separation of class 1 from class 0 (``weights``: bootstrap multiplicities)."""
    weights = np.ones(len(projections)) if weights is None else np.asarray(weights, np.float64)
    means, stds = [], []
    for cls in (0, 1):
        w, x = weights[labels == cls], projections[labels == cls]
        total = w.sum()
        if total < 2:
            return float("nan")
        mean = float((w * x).sum() / total)
        variance = float((w * (x - mean) ** 2).sum() / (total - 1))
        means.append(mean)
        stds.append(np.sqrt(variance))
    return abs(means[1] - means[0]) / ((stds[0] + stds[1]) / 2.0)


def split_subjects(subject_ids: np.ndarray, labels: np.ndarray, fit_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the fitting images: ``fit_fraction`` of each class's subjects (majority label)."""
    if not 0.0 < fit_fraction < 1.0:
        raise ConfigError(f"separation.fit_fraction must be in (0, 1), got {fit_fraction}")
    rng = np.random.default_rng(seed)
    subjects = np.unique(subject_ids)
    majority = {s: int(round(labels[subject_ids == s].mean())) for s in subjects}
    fit_subjects: set[str] = set()
    for cls in (0, 1):
        members = np.array(sorted(s for s in subjects if majority[s] == cls))
        members = members[rng.permutation(len(members))]
        n_fit = int(round(fit_fraction * len(members)))
        n_fit = min(max(n_fit, 1), len(members) - 1) if len(members) > 1 else len(members)
        fit_subjects.update(members[:n_fit].tolist())
    return np.array([s in fit_subjects for s in subject_ids])


def fit_lda(features: np.ndarray, labels: np.ndarray, solver: str, shrinkage: Any):
    """The fitted scikit-learn LDA and its unit normal in feature space (pointing to class 1)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    shrink = None if shrinkage in (None, "none") else shrinkage if shrinkage == "auto" else float(shrinkage)
    if solver == "svd" and shrink is not None:
        raise ConfigError("separation.shrinkage needs solver lsqr or eigen (svd has no shrinkage)")
    lda = LinearDiscriminantAnalysis(solver=solver, shrinkage=shrink).fit(features, labels)
    normal = np.asarray(lda.coef_[0], np.float64)
    return lda, normal / np.linalg.norm(normal)


def _bootstrap(statistic, labels: np.ndarray, subjects: np.ndarray, policy, bounded: bool = False) -> dict:
    """Subject-bootstrap percentile interval of ``statistic(weights)`` (weights = image multiplicities).

    A ratio like the separation can have a skewed bootstrap distribution whose percentiles miss
    the estimate; such an interval is not reported (null with the reason), never stretched to fit.
    A ``bounded`` statistic (AUC, accuracy: shares) at 0 or 1 gets Wilson's interval on the subjects
    (intervals.bounded_bootstrap_ci), not the point its replicates all sit on."""
    from pipeline.evaluate.measures.intervals import CONFIDENCE, bounded_bootstrap_ci, subject_draws, too_few_subjects

    reason = too_few_subjects(policy, subjects)
    if reason:
        return {"ci95": None, "ci95_reason": reason, "ci_method": "subject_bootstrap"}
    counts, image_subject = subject_draws(subjects, policy.n_boot, np.random.default_rng(policy.seed))
    replicates = np.array([statistic(counts[b, image_subject]) for b in range(policy.n_boot)], np.float64)
    replicates = replicates[np.isfinite(replicates)]
    if replicates.size == 0:
        return {"ci95": None, "ci95_reason": "no replicate had a finite value", "ci_method": "subject_bootstrap"}
    estimate = statistic(np.ones(len(subjects)))
    if bounded and estimate in (0.0, 1.0):
        return bounded_bootstrap_ci(replicates, estimate, len(np.unique(subjects)))
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    if not low <= estimate <= high:
        return {"ci95": None, "ci_method": "subject_bootstrap",
                "ci95_reason": f"the bootstrap percentile interval [{low:.3g}, {high:.3g}] excludes the estimate "
                               f"{estimate:.3g} (skewed or biased statistic on {len(np.unique(subjects))} subjects)"}
    return {"ci95": [float(low), float(high)], "ci95_reason": None, "ci_method": "subject_bootstrap"}


def _auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    if weights is not None:
        keep = weights > 0
        scores, labels, weights = scores[keep], labels[keep], weights[keep]
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores, sample_weight=weights))


def _measure(value: float, labels: np.ndarray, subjects: np.ndarray, statistic, policy, bounded: bool = False) -> dict:
    counts = {name: int((labels == cls).sum()) for cls, name in ((0, "healthy"), (1, "cardiomegaly"))}
    block = {"value": float(value), "n_images": counts, "n_subjects": int(len(np.unique(subjects)))}
    if not np.isfinite(value):
        return block | {"value": None, "ci95": None, "ci95_reason": "not computable on this set",
                        "ci_method": "subject_bootstrap"}
    return block | _bootstrap(statistic, labels, subjects, policy, bounded)


def _too_few(labels: np.ndarray, where: str) -> str | None:
    counts = [int((labels == cls).sum()) for cls in (0, 1)]
    if min(counts) < 2:
        return f"{where}: {counts[0]} healthy / {counts[1]} cardiomegaly codes, LDA needs >= 2 of each class"
    return None


def separate(codes: np.ndarray, labels: np.ndarray, subject_ids: np.ndarray, settings: dict[str, Any], seed: int,
             policy) -> tuple[dict, dict[str, np.ndarray]]:
    """The separation section and the arrays the figure and the edit stage need."""
    keep = np.isin(labels, (0, 1))
    features, labels, subjects = code_features(codes)[keep], labels[keep].astype(int), subject_ids[keep].astype(str)
    one_w = codes.ndim == 2 or features.shape[1] == codes.shape[-1]
    section: dict[str, Any] = {
        "what": "linear separation of healthy and cardiomegaly held-out codes (optimised inversions) by LDA",
        "definition": SEPARATION_DEFINITION,
        "features": f"{features.shape[1]} numbers per code ({'one w' if one_w else 'W+ flattened'})",
        "settings": {**settings, "seed": seed},
        "split": "held-out subjects split per class into fitting / scoring parts; a subject's images stay together",
        "reason": None,
        "separation_fit": None, "separation_heldout": None, "accuracy_heldout": None, "auc_heldout": None,
    }
    fit = split_subjects(subjects, labels, settings["fit_fraction"], seed) if len(labels) else np.zeros(0, bool)
    reason = _too_few(labels, "all codes") or _too_few(labels[fit], "fitting part")
    if reason:
        section["reason"] = reason
        empty = {"direction": np.zeros(0), "projections": np.zeros(0), "labels": labels, "fit": fit,
                 "subject_ids": subjects}
        return section, empty
    lda, normal = fit_lda(features[fit], labels[fit], settings["solver"], settings["shrinkage"])
    projections = features @ normal
    held = ~fit
    section["separation_fit"] = _measure(separation(projections[fit], labels[fit]), labels[fit], subjects[fit],
                                         lambda w: separation(projections[fit], labels[fit], w), policy)
    section["reason"] = _too_few(labels[held], "scoring part")
    if held.any() and all((labels[held] == cls).sum() >= 2 for cls in (0, 1)):
        p, y, s = projections[held], labels[held], subjects[held]
        correct = (lda.predict(features[held]) == y).astype(np.float64)
        section["separation_heldout"] = _measure(separation(p, y), y, s, lambda w: separation(p, y, w), policy)
        section["accuracy_heldout"] = _measure(float(correct.mean()), y, s,
                                               lambda w: float((w * correct).sum() / w.sum()), policy, bounded=True)
        section["auc_heldout"] = _measure(_auc(p, y), y, s, lambda w: _auc(p, y, w), policy, bounded=True)
    arrays = {"direction": normal, "projections": projections, "labels": labels, "fit": fit,
              "subject_ids": subjects}
    return section, arrays


def projections_figure(arrays: dict[str, np.ndarray], section: dict, out_png: Path) -> None:
    """Histograms of both classes' projections on the LDA normal, fitting and held-out parts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3), squeeze=False)
    p, y, fit = arrays["projections"], arrays["labels"], arrays["fit"]
    if not len(p):
        y, fit = np.zeros(0, int), np.zeros(0, bool)
    bins = np.linspace(p.min(), p.max(), 25) if len(p) else 10
    for ax, (name, mask, key) in zip(axes[0], (("fitting set", fit, "separation_fit"),
                                                ("held-out set", ~fit, "separation_heldout"))):
        for cls, label, colour in ((0, "healthy", "tab:blue"), (1, "cardiomegaly", "tab:red")):
            ax.hist(p[mask & (y == cls)], bins=bins, alpha=0.6, label=label, color=colour)
        block = section.get(key)
        ax.set_title(f"{name}: separation {block['value']:.2f}" if block else f"{name}: too few codes", fontsize=8)
        ax.set_xlabel("projection on the LDA normal", fontsize=8)
        ax.set_ylabel("codes", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.latent.separation", description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=Path, required=True, help="the inversion stage's codes npz")
    parser.add_argument("--fit-fraction", type=float, default=DEFAULT_SETTINGS["fit_fraction"])
    parser.add_argument("--solver", default=DEFAULT_SETTINGS["solver"], choices=("lsqr", "eigen", "svd"))
    parser.add_argument("--shrinkage", default=DEFAULT_SETTINGS["shrinkage"])
    parser.add_argument("--min-subjects", type=int, default=8)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-json", type=Path, required=True)
    parser.add_argument("--direction-out", type=Path, required=True)
    parser.add_argument("--figure", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pipeline.evaluate.measures.intervals import IntervalPolicy

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings = {"fit_fraction": args.fit_fraction, "solver": args.solver, "shrinkage": args.shrinkage}
    try:
        with np.load(args.codes, allow_pickle=False) as data:
            codes, labels, subjects = (data["real_codes_optimisation"], data["real_labels"],
                                       data["real_subject_ids"].astype(str))
        policy = IntervalPolicy(min_subjects=args.min_subjects, n_boot=args.n_boot, seed=args.seed)
        section, arrays = separate(codes, labels, subjects, settings, args.seed, policy)
    except PipelineError as err:
        log.error("%s", err)
        return 1
    with atomic_path(args.direction_out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    projections_figure(arrays, section, args.figure)
    write_json(args.out_json, section)
    log.info("separation: fit %s, held-out %s (%s)", (section["separation_fit"] or {}).get("value"),
             (section["separation_heldout"] or {}).get("value"), section["reason"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
