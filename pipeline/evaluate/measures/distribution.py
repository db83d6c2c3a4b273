"""Distribution distances of a real vs a generated (or translated) set, as metrics.json blocks.

FID and KID in the standard Inception space (pipeline.evaluate.measures.fid), FRD in radiomic
space (frd), precision / recall / density / coverage in the random VGG-16 space (prdc, embedding),
each with its subject-jackknife 95% interval (intervals), or null with the reason when a feature
space is unavailable (weights absent, extraction failed, FRD switched off). Every task that
compares sets of images (translation, generation, map-to-image) builds its blocks here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.evaluate.measures import embedding, intervals
from pipeline.evaluate.measures import fid as fid_module
from pipeline.evaluate.measures import frd as frd_module
from pipeline.evaluate.measures import prdc as prdc_module
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.slices import fixed_sample_indices


def distance_blocks(
    real: np.ndarray,
    real_subjects: np.ndarray,
    generated: np.ndarray,
    generated_subjects: np.ndarray,
    fid_eps: float,
    policy: IntervalPolicy,
) -> dict:
    """FID and KID blocks of Inception features with their subject-jackknife intervals.

    FID's interval needs the sample route of the Fréchet distance (each set at most 2048 images);
    beyond that every replicate would need a 2048 x 2048 matrix square root, and it is null.
    """
    blocks = fid_module.distribution_distances(real, generated, fid_eps, real_subjects, generated_subjects)
    if blocks["fid"]["value"] is None or max(len(real), len(generated)) > fid_module.FEATURE_DIM:
        blocks["fid"] |= {"ci95": None, "ci_method": "subject_jackknife", "ci95_reason": blocks["fid"]["reason"]
                          or f"more than {fid_module.FEATURE_DIM} images in a set: no affordable interval"}
    else:
        blocks["fid"] |= intervals.two_set_ci(
            lambda r, g: fid_module.frechet_distance_low_rank(real[r], generated[g]),
            real_subjects, generated_subjects, policy, lower_bound=0.0,
        )
    kid = fid_module.KernelInceptionDistance(real, generated, real_subjects, generated_subjects)
    blocks["kid"] |= intervals.two_set_ci(kid, real_subjects, generated_subjects, policy)
    return blocks


def frd_block(
    real: np.ndarray, real_subjects: np.ndarray, generated: np.ndarray, generated_subjects: np.ndarray,
    policy: IntervalPolicy,
) -> dict:
    """The "frd" block of radiomic features of real target images vs translations, with its interval."""
    value, distance, n_features, reason = frd_module.frd_from_features(real, generated)
    interval = {"ci95": None, "ci95_reason": reason, "ci_method": "subject_jackknife"}
    if value is not None:
        interval = intervals.two_set_ci(
            lambda r, g: frd_module.frd_from_features(real[r], generated[g])[0], real_subjects, generated_subjects,
            policy,
        )
    return {
        "value": value,
        "frechet_distance": distance,
        "n_features": n_features,
        "n_real": int((~np.isnan(real).any(axis=1)).sum()),
        "n_generated": int((~np.isnan(generated).any(axis=1)).sum()),
        "reason": reason,
    } | interval


def unavailable_frd(reason: str) -> dict:
    """The "frd" block when FRD is switched off or the features could not be extracted."""
    return {"value": None, "frechet_distance": None, "n_features": 0, "n_real": 0, "n_generated": 0,
            "reason": reason, "ci95": None, "ci95_reason": reason, "ci_method": "subject_jackknife"}


def _null_interval(reason: str) -> dict:
    return {"ci95": None, "ci95_reason": reason, "ci_method": "subject_jackknife"}


def prdc_block(real_features: np.ndarray, real_subjects: np.ndarray, generated_features: np.ndarray,
               generated_ids: np.ndarray, policy: IntervalPolicy) -> dict:
    """Precision / recall / density / coverage with their jackknife intervals, or null with the reason."""
    k = prdc_module.NEAREST_K
    block = {"feature_space": embedding.SETTINGS["name"], "k": k, "n_real": len(real_features),
             "n_generated": len(generated_features), "reason": None}
    problem = prdc_module.too_few_samples(len(real_features), len(generated_features), k)
    if problem:
        return block | {"reason": problem} | {m: {"value": None} | _null_interval(problem) for m in prdc_module.MEASURES}
    measures = prdc_module.PRDC(real_features, generated_features, k)
    values = measures()
    for name in prdc_module.MEASURES:
        statistic = lambda r, g, name=name: (measures(r, g) or {}).get(name)
        block[name] = {"value": values[name]} | intervals.two_set_ci(
            statistic, real_subjects, generated_ids, policy, lower_bound=0.0,
            upper_bound=None if name in prdc_module.UNBOUNDED else 1.0,
        )
    return block


def distribution_block(
    real_rows: np.ndarray,
    generated_rows: np.ndarray,
    real_subjects: np.ndarray,
    generated_ids: np.ndarray,
    features: dict[str, dict[str, np.ndarray] | None],
    radiomic_rows: dict[str, np.ndarray],
    problems: dict[str, str | None],
    fid_eps: float,
    policy: IntervalPolicy,
    compares: str,
    sets: tuple[str, str] = ("real", "generated"),
) -> dict:
    """FID / KID / FRD (and PRDC where embeddings were computed) of two feature sets, restricted to rows.

    ``sets`` names the reference set and the compared one among the keys of ``features`` (as
    ``inception_and_radiomic_features`` made them); ``real_rows`` / ``generated_rows`` index them,
    ``real_subjects`` / ``generated_ids`` give every row's subject (the unit of the intervals).
    """
    reference, compared = sets
    block = {
        "compares": compares,
        "n_real": len(real_rows),
        "n_real_subjects": int(len(np.unique(real_subjects[real_rows].astype(str)))),
        "n_generated": len(generated_rows),
    }
    if problems["inception"] is None:
        inception = features["inception"]
        block |= distance_blocks(inception[reference][real_rows], real_subjects[real_rows],
                                 inception[compared][generated_rows], generated_ids[generated_rows], fid_eps, policy)
        block["fid"]["compares"] = compares
    else:
        block |= fid_module.unavailable_distances(problems["inception"])
        block["fid"] |= {"compares": None} | _null_interval(problems["inception"])
        block["kid"] |= _null_interval(problems["inception"])
    if problems["frd"] is None:
        real_pick = np.intersect1d(radiomic_rows[reference], real_rows)
        generated_pick = np.intersect1d(radiomic_rows[compared], generated_rows)
        lookup = lambda rows, pick: np.searchsorted(rows, pick)
        block["frd"] = frd_block(
            features["radiomics"][reference][lookup(radiomic_rows[reference], real_pick)], real_subjects[real_pick],
            features["radiomics"][compared][lookup(radiomic_rows[compared], generated_pick)],
            generated_ids[generated_pick], policy,
        )
    else:
        block["frd"] = unavailable_frd(problems["frd"])
    if "embedding" in features:
        block["prdc"] = prdc_block(features["embedding"][reference][real_rows], real_subjects[real_rows],
                                   features["embedding"][compared][generated_rows], generated_ids[generated_rows],
                                   policy)
    return block


def inception_and_radiomic_features(sets: dict[str, np.ndarray], inception_weights: Path | None, frd: bool,
                                    frd_max_images: int | dict[str, int], batch_size: int, device: str):
    """Inception (FID / KID) and radiomic (FRD) features of named image sets (e.g. real, generated,
    floor), for ``distribution_block``: (features[space][name], radiomic_rows[name], problems), a
    feature space whose weights are missing or which fails being left out with its reason in
    ``problems``. Radiomics cost ~0.4 s an image, so only ``frd_max_images`` evenly spaced images
    of each set get them (``radiomic_rows``; a dict gives each set its own number, e.g. a class's
    floor as many as that class's generated images get)."""
    problems: dict[str, str | None] = {"frd": None if frd else "FRD switched off (evaluate.frd: false)"}
    problems["inception"] = (fid_module.inception_weights_problem(inception_weights) if inception_weights is not None
                             else "no Inception weights file given")
    features: dict[str, dict[str, np.ndarray]] = {}
    if problems["inception"] is None:
        try:
            extractor = fid_module.load_inception(inception_weights, device=device)
            features["inception"] = {name: fid_module.inception_features(extractor, images, batch_size, device)
                                     for name, images in sets.items()}
        except RuntimeError as err:
            problems["inception"] = (f"Inception weights at {inception_weights} do not load into torch-fidelity's "
                                     f"network ({str(err).splitlines()[0][:200]})")
    radiomic_rows = {name: fixed_sample_indices(len(images), frd_max_images[name] if isinstance(frd_max_images, dict)
                                                else frd_max_images) for name, images in sets.items()}
    if frd:
        try:
            features["radiomics"] = frd_module.radiomic_features_of_sets(
                {name: images[radiomic_rows[name]] for name, images in sets.items()})
        except (ValueError, RuntimeError) as err:
            problems["frd"] = f"radiomic feature extraction failed: {str(err)[:200]}"
    return features, radiomic_rows, problems
