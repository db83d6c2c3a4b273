"""Scoring a reader study: every measure against an independent computation (scipy's beta
quantiles, binomial test and Mann-Whitney U, a bootstrap, a jackknife, Monte Carlo coin tosses),
and the intervals on simulated readers of known accuracy and AUC covering the truth at about
the nominal rate under the study's design (one fair coin per image)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, mannwhitneyu, norm, t as student_t
from sklearn.metrics import roc_auc_score

from pipeline.reader_study.score import ReaderAnswers, chance_p_value, mlflow_metrics, score_study

FAKE, REAL = "fake", "real"


def synthetic_key(truths: list[str], confidence: bool = True) -> dict:
    return {"format": 2, "study_id": "sim", "experiment": "sim", "pick": "random", "candidates_per_image": 1,
            "confidence": confidence,
            "images": [{"image_id": f"img-{i:010x}", "position": i + 1, "truth": t, "file": f"images/{i}.png",
                        "source": {}} for i, t in enumerate(truths)]}


def reader(name: str, key: dict, said_fake, confidence=None) -> ReaderAnswers:
    ids = [e["image_id"] for e in key["images"]]
    answers = {i: FAKE if s else REAL for i, s in zip(ids, said_fake)}
    return ReaderAnswers(name, Path(f"{name}.csv"), answers,
                         None if confidence is None else {i: int(c) for i, c in zip(ids, confidence)})


def coins(rng: np.random.Generator, n: int) -> np.ndarray:
    """The design: each image generated (True) or real by its own fair coin."""
    return rng.random(n) < 0.5


def simulated_readers(rng, is_fake, abilities, case_sd=0.0, noise_sd=1.0, confidence_step=0.4):
    """Readers of a binormal kind: evidence = ability x generated + the image's own effect (shared by
    every reader) + the reader's noise; "generated" above ability / 2; confidence from the distance."""
    case = rng.normal(0, case_sd, len(is_fake))
    said, confidence = [], []
    for ability in abilities:
        distance = ability * is_fake + case + rng.normal(0, noise_sd, len(is_fake)) - ability / 2
        said.append(distance > 0)
        confidence.append(1 + np.minimum(4, np.floor(np.abs(distance) / confidence_step)))
    return np.array(said), np.array(confidence)


def clopper_pearson(k: int, n: int) -> list[float]:
    """scipy's exact interval (a root search on the binomial tails, not beta quantiles)."""
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return [ci.low, ci.high]


def test_answers_from_the_key_score_one_and_inverted_zero():
    truths = [REAL, FAKE] * 12
    key = synthetic_key(truths)
    is_fake = np.array([t == FAKE for t in truths])
    scores = score_study(key, [reader("right", key, is_fake, [5] * 24), reader("wrong", key, ~is_fake, [5] * 24)])
    r, w = scores["readers"]["right"], scores["readers"]["wrong"]
    assert r["accuracy"]["value"] == 1 and r["auc"]["value"] == 1 and r["fakes_taken_for_real"]["value"] == 0
    assert w["accuracy"]["value"] == 0 and w["auc"]["value"] == 0 and w["fakes_taken_for_real"]["value"] == 1
    # Clopper-Pearson from the beta distribution: 24/24 -> [0.025^(1/24), 1]; 0/24 -> [0, 1 - 0.025^(1/24)].
    assert r["accuracy"]["ci95"] == pytest.approx([0.025 ** (1 / 24), 1.0])
    assert w["accuracy"]["ci95"] == pytest.approx([0.0, 1 - 0.025 ** (1 / 24)])
    assert r["p_value_vs_chance"] == pytest.approx(2 * 0.5 ** 24)
    assert scores["pooled"]["accuracy"]["value"] == 0.5 and scores["pooled"]["auc"]["value"] == 0.5
    # Right and wrong together: every image has one right answer whatever its truth, so the
    # randomisation test sees exactly chance.
    assert scores["pooled"]["p_value_vs_chance"] == pytest.approx(1.0)


def test_per_reader_scores_match_independent_computations():
    rng = np.random.default_rng(3)
    is_fake = coins(rng, 40)
    key = synthetic_key([FAKE if f else REAL for f in is_fake])
    said, confidence = simulated_readers(rng, is_fake, [1.0])
    block = score_study(key, [reader("c", key, said[0], confidence[0])])["readers"]["c"]
    right = int((said[0] == is_fake).sum())
    assert block["accuracy"]["k"] == right and block["accuracy"]["ci95"] == pytest.approx(clopper_pearson(right, 40))
    assert block["p_value_vs_chance"] == pytest.approx(binomtest(right, 40).pvalue)
    n_fake = int(is_fake.sum())
    hits = int((said[0] & is_fake).sum())
    assert block["sensitivity_fake"]["value"] == pytest.approx(hits / n_fake)
    assert block["sensitivity_fake"]["ci95"] == pytest.approx(clopper_pearson(hits, n_fake))
    assert block["specificity_fake"]["value"] == pytest.approx(((~said[0]) & ~is_fake).sum() / (40 - n_fake))
    assert block["fakes_taken_for_real"]["value"] == pytest.approx(1 - hits / n_fake)
    # AUC: answer and confidence as a signed rating; Mann-Whitney U / (n_fake x n_real) from scipy.
    signed = np.where(said[0], 1, -1) * confidence[0]
    u = mannwhitneyu(signed[is_fake], signed[~is_fake]).statistic
    assert block["auc"]["value"] == pytest.approx(u / (n_fake * (40 - n_fake)))


def test_delong_variance_agrees_with_a_bootstrap_over_images():
    rng = np.random.default_rng(11)
    is_fake = coins(rng, 300)
    key = synthetic_key([FAKE if f else REAL for f in is_fake])
    said, confidence = simulated_readers(rng, is_fake, [1.0, 1.6], case_sd=0.7)
    readers = [reader(f"r{j}", key, said[j], confidence[j]) for j in range(2)]
    scores = score_study(key, readers)
    signed = np.where(said, 1, -1) * confidence
    fakes, reals = np.flatnonzero(is_fake), np.flatnonzero(~is_fake)
    # Images resampled within their class (both readers together); AUC = U / (n_fake n_real) by scipy.
    f = rng.choice(fakes, (10_000, len(fakes)))
    r = rng.choice(reals, (10_000, len(reals)))
    boot = np.stack([mannwhitneyu(s[f], s[r], axis=1).statistic / (len(fakes) * len(reals)) for s in signed], axis=1)
    for j in range(2):
        assert scores["readers"][f"r{j}"]["auc"]["se"] == pytest.approx(boot[:, j].std(ddof=1), rel=0.1)
    # The pooled interval's Cov2 is the covariance between the two readers' AUCs over images.
    assert scores["pooled"]["auc"]["cov2"] == pytest.approx(np.cov(boot.T)[0, 1], rel=0.2)


def test_pooled_proportions_match_a_jackknife_obuchowski_rockette_computation():
    rng = np.random.default_rng(5)
    is_fake = coins(rng, 50)
    key = synthetic_key([FAKE if f else REAL for f in is_fake])
    said, confidence = simulated_readers(rng, is_fake, [0.6, 1.0, 1.4, 2.0], case_sd=0.8)
    pooled = score_study(key, [reader(f"r{j}", key, said[j], confidence[j]) for j in range(4)])["pooled"]
    correct = (said == is_fake).astype(float)
    foms = correct.mean(axis=1)
    n = correct.shape[1]
    leave_one_out = np.array([np.delete(correct, i, axis=1).mean(axis=1) for i in range(n)])  # (n, J)
    centred = leave_one_out - leave_one_out.mean(axis=0)
    jackknife_cov = (n - 1) / n * centred.T @ centred  # Quenouille-Tukey jackknife covariance
    cov2 = jackknife_cov[~np.eye(4, dtype=bool)].mean()
    ms_r = foms.var(ddof=1)
    variance = ms_r / 4 + max(cov2, 0)
    df = (ms_r + 4 * max(cov2, 0)) ** 2 / (ms_r ** 2 / 3)
    half = student_t.ppf(0.975, df) * np.sqrt(variance)
    assert pooled["accuracy"]["value"] == pytest.approx(foms.mean())
    assert pooled["accuracy"]["cov2"] == pytest.approx(cov2)
    assert pooled["accuracy"]["ci95"] == pytest.approx([foms.mean() - half, foms.mean() + half])


def test_pooled_p_value_is_the_exact_randomisation_test_of_no_reader_can_tell():
    rng = np.random.default_rng(8)
    is_fake = coins(rng, 20)
    said, _ = simulated_readers(rng, is_fake, [0.8, 1.2, 0.5], case_sd=0.5)
    # One reader: the exact binomial test.
    right = int((said[0] == is_fake).sum())
    assert chance_p_value(said[:1], is_fake) == pytest.approx(binomtest(right, 20).pvalue)
    # Three readers: against Monte Carlo coin tosses with the answers held fixed.
    observed = (said == is_fake).sum()
    tossed = rng.random((200_000, 20)) < 0.5
    totals = (said[None, :, :] == tossed[:, None, :]).sum(axis=(1, 2))
    monte_carlo = np.mean(np.abs(totals - 30) >= abs(observed - 30))
    assert chance_p_value(said, is_fake) == pytest.approx(monte_carlo, abs=0.005)
    # Under the null (answers independent of the truths) it rejects at about its level.
    rejections = [chance_p_value(rng.random((3, 24)) < rng.uniform(0.2, 0.8), coins(rng, 24)) < 0.05
                  for _ in range(1000)]
    assert np.mean(rejections) <= 0.06


def test_per_reader_accuracy_interval_covers_the_true_accuracy_at_the_nominal_rate():
    """Readers with sensitivity 0.8 and specificity 0.6: true accuracy 0.7 under the coin design."""
    rng = np.random.default_rng(21)
    covered, rejected_at_chance = [], []
    for _ in range(1000):
        is_fake = coins(rng, 24)
        key = synthetic_key([FAKE if f else REAL for f in is_fake])
        right = np.where(is_fake, rng.random(24) < 0.8, rng.random(24) < 0.6)
        skilled = reader("s", key, np.where(right, is_fake, ~is_fake), np.full(24, 3))
        guesser = reader("g", key, rng.random(24) < 0.5, np.full(24, 3))  # chance: accuracy 0.5
        scores = score_study(key, [skilled, guesser])["readers"]
        low, high = scores["s"]["accuracy"]["ci95"]
        covered.append(low <= 0.7 <= high)
        rejected_at_chance.append(scores["g"]["p_value_vs_chance"] < 0.05)
    assert np.mean(covered) >= 0.93
    assert np.mean(rejected_at_chance) <= 0.05 + 0.015


def test_pooled_interval_covers_the_mean_over_readers_and_images():
    """Obuchowski-Rockette-Hillis: readers drawn from a population of abilities, images with an
    effect every reader shares; the truth is the population mean accuracy, computed apart."""
    rng = np.random.default_rng(34)
    mean_ability, ability_sd, case_sd = 1.2, 0.6, 0.5  # readers differ: an interval for fixed readers covers 0.84
    abilities = rng.normal(mean_ability, ability_sd, 2_000_000)
    true_accuracy = norm.cdf(abilities / 2 / np.sqrt(1 + case_sd ** 2)).mean()
    covered = []
    for _ in range(400):
        is_fake = coins(rng, 40)
        key = synthetic_key([FAKE if f else REAL for f in is_fake])
        said, confidence = simulated_readers(rng, is_fake, rng.normal(mean_ability, ability_sd, 6), case_sd)
        pooled = score_study(key, [reader(f"r{j}", key, said[j], confidence[j]) for j in range(6)])["pooled"]
        low, high = pooled["accuracy"]["ci95"]
        covered.append(low <= true_accuracy <= high)
    assert np.mean(covered) >= 0.93


def test_auc_interval_covers_the_true_auc_at_about_the_nominal_rate():
    rng = np.random.default_rng(55)
    big = coins(rng, 1_000_000)
    said, confidence = simulated_readers(rng, big, [1.0], case_sd=0.5)
    true_auc = roc_auc_score(big, np.where(said[0], 1, -1) * confidence[0])
    covered = []
    for _ in range(400):
        is_fake = coins(rng, 60)
        key = synthetic_key([FAKE if f else REAL for f in is_fake])
        said, confidence = simulated_readers(rng, is_fake, [1.0], case_sd=0.5)
        low, high = score_study(key, [reader("r", key, said[0], confidence[0])])["readers"]["r"]["auc"]["ci95"]
        covered.append(low <= true_auc <= high)
    assert np.mean(covered) >= 0.92


def test_mlflow_metrics_leave_out_what_a_study_could_not_measure():
    key = synthetic_key([REAL] * 6, confidence=False)
    scores = score_study(key, [reader("a", key, [False] * 6)])
    flat = mlflow_metrics(scores)
    assert flat["reader_study/a/accuracy"] == 1.0 and flat["reader_study/a/specificity_fake"] == 1.0
    assert "reader_study/a/sensitivity_fake" not in flat and "reader_study/a/auc" not in flat
    assert scores["readers"]["a"]["auc"]["reason"] == "the study asked for no confidences"
