"""Evaluate a trained two-way translator (CycleGAN) on the held-out test slices.

For each direction: FID/KID (standard Inception) and FRD (radiomics) of translations against
real test images of the target domain, each beside its real-vs-real floor (real test vs real
training images of the target domain, pipeline.evaluate.measures.floor), SSIM between each source
and its translation (structure kept, unpaired), cycle SSIM (x vs F(G(x))), the steganography
check, the share of translations a real-data classifier assigns to the target domain (beside its
real-test AUC; null when it is no better than chance), the share of change inside a region mask
where the test npz carries one, and, where the source npz carries the same anatomy rendered in
the other modality (phantom ``partner``), paired SSIM / PSNR / MAE, with MAE in HU when the
target is CT, and the paired SSIM gain over the untranslated input. Every block states the data range and the normalisation its numbers depend on;
every measured number carries a 95% interval over subjects (pipeline.evaluate.measures.intervals: a
subject bootstrap for per-image metrics, a subject jackknife for FID / KID / FRD), or null with the reason.

CLI: python -m pipeline.evaluate --model M --test-a A --test-b B --out metrics.json ...
(``python -m pipeline.evaluate`` dispatches here for models whose task is "translation").
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.hashing import file_sha256
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.evaluate import cli
from pipeline.evaluate.measures import intervals
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures import fid as fid_module
from pipeline.evaluate.measures import frd as frd_module
from pipeline.evaluate.measures.classifier import acceptance, beside, null_summary, real_test_check
from pipeline.evaluate.measures.distribution import distribution_block, inception_and_radiomic_features
from pipeline.evaluate.measures.floor import FLOOR_SET, floor_block, floor_rows, unavailable_floor
from pipeline.evaluate.measures.regions import change_inside_mask
from pipeline.evaluate.measures.slices import fixed_sample_indices, load_test_slices
from pipeline.evaluate.measures.steganography import steganography_check
from pipeline.evaluate.measures.summary import summarise
from pipeline.evaluate.measures.image_metrics import (
    BODY_THRESHOLD_HU,
    DATA_RANGE,
    FOREGROUND_THRESHOLD,
    SSIM_SETTINGS,
    centroid_shift_per_image,
    foreground_scale_error_per_image,
    mae_hu_per_image,
    mae_per_image,
    psnr_per_image,
    ssim_per_image,
    to_hu,
    window_range_hu,
)
from pipeline.evaluate.measures.synthetic_ct import score_synthetic_ct

log = logging.getLogger("pipeline.evaluate.tasks.translation")

REVERSE = {"a_to_b": "b_to_a", "b_to_a": "a_to_b"}
DOMAINS = {"a_to_b": ("a", "b"), "b_to_a": ("b", "a")}
RESERVED_KEYS = {"schema_version", "direction_names", "inputs", "settings", "model", "classifier"}
"""Top-level keys of metrics.json besides the direction blocks (which sit beside them by name)."""


class Translator(Protocol):
    def translate(self, direction: str, images: np.ndarray) -> np.ndarray: ...


def normalisation_text(
    modality: str, ct_window: tuple[float, float] | None, mri_percentiles: tuple[float, float]
) -> str:
    """How a modality's slices were brought to [0, 1] (contracts: windowed stage)."""
    if modality == "ct" and ct_window is None:
        return "[0,1] after each series' own VOI window from its DICOM header (not one fixed HU window)"
    if modality == "ct":
        center, width = ct_window
        return f"[0,1] after window {center:g}/{width:g} HU (level/width; HU outside clipped)"
    if modality in ("mr", "mri"):
        low, high = mri_percentiles
        return f"[0,1] after percentile {low:g}-{high:g} normalisation"
    return "[0,1] as stored in the slices npz"


def translate_all(model: Translator, direction: str, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Translate a stack in batches and check the translator kept its contract."""
    parts = [
        model.translate(direction, images[start : start + batch_size])
        for start in range(0, len(images), batch_size)
    ]
    translated = np.concatenate(parts, axis=0).astype(np.float32)
    if translated.shape != images.shape:
        raise PipelineError(
            f"translator '{direction}' returned shape {translated.shape} for input {images.shape}"
        )
    if not np.all(np.isfinite(translated)) or translated.min() < 0.0 or translated.max() > 1.0:
        raise PipelineError(f"translator '{direction}' returned values outside [0, 1] or not finite")
    return translated


def paired_block(
    translated: np.ndarray,
    partner: np.ndarray,
    subject_ids: np.ndarray,
    target_modality: str,
    normalisation: str,
    ct_window: tuple[float, float] | None,
    policy: IntervalPolicy,
    partner_hu: np.ndarray | None = None,
    partner_hu_range: tuple[float, float] | None = None,
    body_threshold_hu: float = BODY_THRESHOLD_HU,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Paired metrics of translations against the partner images; also returns the per-image values.

    In [0, 1] units: SSIM, PSNR, MAE. When the target is CT with one window: ``mae_window_hu`` (the
    whole image, within the window's HU range only) and, when the partner CT is also given in full
    HU (``partner_hu``, clipped to ``partner_hu_range`` by the slice extraction), the synthetic-CT
    block as SynthRAD scores it (pipeline.evaluate.measures.synthetic_ct): ``mae_hu_body``,
    ``psnr_hu_body`` and ``mae_hu_body_floor``, the translation mapped back through the window.
    """
    per_image = {
        "ssim": ssim_per_image(partner, translated),
        "psnr": psnr_per_image(partner, translated),
        "mae": mae_per_image(partner, translated),
    }
    block = {
        "compares": "translation G(x) vs the same anatomy rendered in the target modality (phantom partner)",
        "n": len(translated),
        "n_subjects": len(np.unique(subject_ids)),
        "data_range": DATA_RANGE,
        "normalisation": normalisation,
        "ssim": summarise(per_image["ssim"], subject_ids, policy),
        "psnr": summarise(per_image["psnr"], subject_ids, policy),
        "mae": summarise(per_image["mae"], subject_ids, policy),
        "mae_window_hu": None,
        "mae_window_hu_reason": None,
        "ct_body": None,
        "ct_body_reason": None,
    }
    if target_modality != "ct":
        block["mae_window_hu_reason"] = block["ct_body_reason"] = "target is not CT"
        return block, per_image
    if ct_window is None:
        block["mae_window_hu_reason"] = block["ct_body_reason"] = (
            "no single CT window (each series used its own), so [0,1] does not map to HU")
        return block, per_image
    per_image["mae_window_hu"] = mae_hu_per_image(partner, translated, ct_window)
    center, width = ct_window
    window_range = window_range_hu(ct_window)
    block["mae_window_hu"] = summarise(per_image["mae_window_hu"], subject_ids, policy) | {
        "window_center": float(center),
        "window_width": float(width),
        "hu_range": list(window_range),
        "note": "whole image (background included), both sides mapped back through the window "
        "(HU = center - 0.5 + (v - 0.5)(width - 1)): the MAE within the window's HU range only, values "
        "beyond it were clipped; not the MAE synthetic-CT papers report (that is ct_body.mae_hu_body)",
    }
    if partner_hu is None:
        block["ct_body_reason"] = "the test npz carries no 'partner_hu' (the partner CT in full HU)"
        return block, per_image
    block["ct_body"], body_values = score_synthetic_ct(
        partner_hu, to_hu(translated, ct_window), subject_ids, policy, partner_hu_range, body_threshold_hu,
        f"G(x) in [0,1] mapped back through the window {center:g}/{width:g}: it holds HU "
        f"{window_range[0]:g}..{window_range[1]:g} only (the translator is trained on windowed slices, "
        "so bone, fat and air are out of its reach); the real CT in full HU",
        window_range_hu=window_range,
    )
    per_image |= {f"ct_body_{key}": values for key, values in body_values.items()}
    return block, per_image


def paired_gain(source: np.ndarray, translated: np.ndarray, partner: np.ndarray, subject_ids: np.ndarray,
                policy: IntervalPolicy) -> tuple[dict, dict[str, np.ndarray]]:
    """What translating adds over doing nothing: per image SSIM(G(x), partner) - SSIM(x, partner).

    The input x itself already shares the partner's anatomy, so a paired SSIM means little alone;
    the gain is a paired difference on the same image (and so the same subject), its interval over
    subjects, not the difference of two separately summarised means.
    """
    input_ssim = ssim_per_image(partner, source)
    gain = ssim_per_image(partner, translated) - input_ssim
    shift, input_shift = centroid_shift_per_image(partner, translated), centroid_shift_per_image(partner, source)
    scale_error = foreground_scale_error_per_image(partner, translated)
    where = (f"foreground (> {FOREGROUND_THRESHOLD:g}, isolated pixels opened away, holes filled) centroid distance "
             f"in pixels of {translated.shape[-1]}")
    return {
        "ssim_input": summarise(input_ssim, subject_ids, policy) | {
            "compares": "the untranslated input x vs the partner (doing nothing)"},
        "ssim_gain": summarise(gain, subject_ids, policy) | {
            "compares": "per image SSIM(G(x), partner) - SSIM(x, partner): the paired gain of translating"},
        "anatomy_shift_px": summarise(shift, subject_ids, policy) | {
            "compares": f"G(x) vs the partner: {where}; a translator that moves the anatomy shows here"},
        "anatomy_shift_px_input": summarise(input_shift, subject_ids, policy) | {
            "compares": f"the input x vs the partner (the floor: same anatomy, two modalities' outlines): {where}"},
        "anatomy_scale_error": summarise(scale_error, subject_ids, policy) | {
            "compares": "G(x) vs the partner (one modality): |sqrt(foreground area ratio) - 1|, the anatomy's "
                        "linear size change; an empty G(x) counts 1"},
    }, {"ssim_input": input_ssim, "ssim_gain": gain, "anatomy_shift_px": shift, "anatomy_shift_px_input": input_shift,
        "anatomy_scale_error": scale_error}


def direction_metrics(
    way: str,
    source: dict[str, np.ndarray],
    target: dict[str, np.ndarray],
    translated: np.ndarray,
    reconstructed: np.ndarray,
    modalities: dict[str, str],
    normalisation: dict[str, str],
    ct_window: tuple[float, float] | None,
    policy: IntervalPolicy,
    body_threshold_hu: float = BODY_THRESHOLD_HU,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Counts, structure and cycle SSIM, and paired metrics of one direction; plus per-image values."""
    source_domain, target_domain = DOMAINS[way]
    subjects = source["subject_ids"]
    values = {
        "ssim": ssim_per_image(source["images"], translated),
        "ssim_cycle": ssim_per_image(source["images"], reconstructed),
        "subject_ids": subjects,
        "slice_index": source["slice_index"],
    }
    block = {
        "direction": way,
        "source_domain": source_domain,
        "target_domain": target_domain,
        "source_modality": modalities[source_domain],
        "target_modality": modalities[target_domain],
        "n_source": len(source["images"]),
        "n_source_subjects": len(np.unique(subjects)),
        "n_target": len(target["images"]),
        "n_target_subjects": len(np.unique(target["subject_ids"])),
        "ssim": summarise(values["ssim"], subjects, policy)
        | {
            "compares": "source x vs its translation G(x) (unpaired: structure kept across modalities)",
            "data_range": DATA_RANGE,
            "normalisation": f"source {normalisation[source_domain]}; translation {normalisation[target_domain]}",
        },
        "ssim_cycle": summarise(values["ssim_cycle"], subjects, policy)
        | {
            "compares": "source x vs its cycle reconstruction F(G(x))",
            "data_range": DATA_RANGE,
            "normalisation": normalisation[source_domain],
        },
        "paired": None,
        "paired_reason": None,
    }
    has_partner = source["has_partner"].astype(bool) if "partner" in source else None
    if has_partner is not None and has_partner.any():
        block["paired"], paired_values = paired_block(
            translated[has_partner],
            source["partner"][has_partner],
            subjects[has_partner],
            modalities[target_domain],
            normalisation[target_domain],
            ct_window,
            policy,
            partner_hu=source["partner_hu"][has_partner] if "partner_hu" in source else None,
            partner_hu_range=source.get("partner_hu_range"),
            body_threshold_hu=body_threshold_hu,
        )
        gain_block, gain_values = paired_gain(source["images"][has_partner], translated[has_partner],
                                              source["partner"][has_partner], subjects[has_partner], policy)
        block["paired"] |= gain_block
        values |= {f"paired_{key}": array for key, array in (paired_values | gain_values).items()}
        values["paired_index"] = np.flatnonzero(has_partner)
    return block, values


def classifier_share_block(
    probability_b: np.ndarray, target_domain: str, subject_ids: np.ndarray, policy: IntervalPolicy, check: dict
) -> tuple[dict, dict[str, np.ndarray]]:
    """Share of translations the real-data classifier assigns to the target domain (and mean
    probability), beside the classifier's real-test AUC and balanced accuracy; both null with the
    reason when ``check`` (classifier.real_test_check) says its scores do not count."""
    p_target = probability_b if target_domain == "b" else 1.0 - probability_b
    assigned = (p_target > 0.5).astype(np.float64)
    block = {
        "compares": f"classifier trained on real a vs real b, applied to translations G(x); intended class: domain {target_domain}",
        "intended_domain": target_domain,
        "share_intended": summarise(assigned, subject_ids, policy, share=True),
        "mean_probability_intended": summarise(p_target, subject_ids, policy),
        "reason": check["reason"],
    } | beside(check)
    if not check["usable"]:
        n_subjects = len(np.unique(subject_ids.astype(str)))
        block |= {key: null_summary(len(p_target), n_subjects, check["reason"])
                  for key in ("share_intended", "mean_probability_intended")}
    return block, {"classifier_p_intended": p_target}


def regions_block(
    source: dict[str, np.ndarray], translated: np.ndarray, policy: IntervalPolicy
) -> tuple[dict | None, str | None, dict[str, np.ndarray]]:
    """Share of the total |G(x) - x| inside vs outside the source's region_mask, or None and the reason."""
    if "region_mask" not in source:
        return None, "no 'region_mask' array in the source test npz", {}
    inside, total, area = change_inside_mask(source["images"], translated, source["region_mask"])
    subjects = source["subject_ids"]
    if total.sum() <= 0.0:
        return None, "the translation changed nothing (total absolute change is 0)", {}
    share = float(inside.sum() / total.sum())
    interval = intervals.ratio_ci(inside, total, subjects, policy, bounds=(0.0, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(total > 0, inside / total, np.nan) - area
    return {
        "excess_share": summarise(excess, subjects, policy) | {
            "compares": "per image: share of |G(x) - x| inside the mask minus the mask's share of the image (0: "
            "change spread evenly; > 0: concentrated inside); images the translation left unchanged are left out "
            "(counted in n_infinite)"},
        "compares": "sum of |G(x) - x| inside the source's region_mask over the sum everywhere, native grid, all test images",
        "share_inside": share,
        "share_outside": 1.0 - share,
        "ci95_inside": interval["ci95"],
        "ci95_inside_reason": interval["ci95_reason"],
        "ci_method": interval["ci_method"],
        "mask_area_fraction": float(area.mean()),
        "n": len(total),
        "n_subjects": int(len(np.unique(subjects.astype(str)))),
    }, None, {"change_inside": inside, "change_total": total, "change_excess_share": excess}


def evaluate_translation(
    model: Translator,
    test_a: Path,
    test_b: Path,
    inception_weights: Path,
    directions: dict[str, str] | None = None,
    modalities: dict[str, str] | None = None,
    ct_window: tuple[float, float] | None = (40.0, 80.0),
    mri_percentiles: tuple[float, float] = (0.5, 99.5),
    batch_size: int = 16,
    fid_eps: float = 1e-6,
    seed: int = 0,
    n_figure_examples: int = 4,
    device: str = "cpu",
    samples_out: Path | None = None,
    per_image_out: Path | None = None,
    classifier: Path | None = None,
    frd: bool = True,
    frd_max_images: int = 200,
    intervals_policy: IntervalPolicy = IntervalPolicy(),
    stego_blur_sigma: float = 1.0,
    stego_noise_sigma: float = 0.02,
    stego_max_drop: float = 0.1,
    histogram_bins: int = 64,
    train_paths: dict[str, Path] | None = None,
    body_threshold_hu: float = BODY_THRESHOLD_HU,
) -> dict:
    """Metrics of both translation directions on the test slices, as the dict written to metrics.json.

    directions: names of the two ways, default {"a_to_b": "ct_to_mri", "b_to_a": "mri_to_ct"}.
    modalities: modality per domain ("ct", "mr"/"mri", or other; any case), default {"a": "ct", "b": "mri"};
        decides the normalisation statement and whether MAE is also given in HU.
    ct_window: (center, width) in HU the CT slices were windowed with (default brain 40/80);
        None when each series used its own DICOM window (then no MAE in HU).
    mri_percentiles: the percentiles MR slices were normalised with (default 0.5/99.5); stated only.
    batch_size: images per translator / Inception call (default 16).
    fid_eps: diagonal offset used when the covariance product is singular (default 1e-6).
    seed: steganography-noise seed (default 0).
    n_figure_examples: fixed test images per direction saved to ``samples_out`` (default 4).
    device: where Inception runs (default cpu).
    per_image_out: optional npz with every per-image value (for a bootstrap over subjects).
    classifier: classifier.pt from pipeline.evaluate.measures.classifier (None: classifier blocks null with the reason).
    frd: compute FRD (default True; PyRadiomics costs ~0.4 s per 64x64 image on one core).
    frd_max_images: at most this many evenly spaced images per set enter FRD (default 200).
    intervals_policy: minimum subjects, bootstrap replicates and seed of every interval (intervals.py).
    stego_blur_sigma, stego_noise_sigma, stego_max_drop: steganography check (defaults 1.0 px, 0.02, 0.1).
    histogram_bins: bins over [0, 1] of the intensity histograms saved for the figure (default 64).
    train_paths: {"a": train.npz, "b": train.npz}, the training patients' real slices: each
        direction's distances get their real-vs-real floor (pipeline.evaluate.measures.floor); a
        domain left out has a floor null with the reason.
    body_threshold_hu: the real CT's body mask threshold of the synthetic-CT block (default -500 HU).
    """
    policy = intervals_policy
    directions = directions or {"a_to_b": "ct_to_mri", "b_to_a": "mri_to_ct"}
    modalities = {domain: name.lower() for domain, name in (modalities or {"a": "ct", "b": "mri"}).items()}
    if set(directions) != set(DOMAINS) or set(directions.values()) & RESERVED_KEYS:
        raise ConfigError(
            f"directions must map a_to_b and b_to_a to names other than {sorted(RESERVED_KEYS)}, got {directions}"
        )
    test_paths = {"a": Path(test_a), "b": Path(test_b)}
    data = {domain: load_test_slices(path) for domain, path in test_paths.items()}
    if data["a"]["images"].shape[1:] != data["b"]["images"].shape[1:]:
        raise InputDataError(test_b, f"slice size {data['b']['images'].shape[1:]} differs from {test_a}'s")
    normalisation = {d: normalisation_text(modalities[d], ct_window, mri_percentiles) for d in ("a", "b")}

    translated, reconstructed = {}, {}
    for way in directions:
        source = DOMAINS[way][0]
        translated[way] = translate_all(model, way, data[source]["images"], batch_size)
        reconstructed[way] = translate_all(model, REVERSE[way], translated[way], batch_size)

    floor_data: dict[str, dict[str, np.ndarray]] = {}
    for domain, path in (train_paths or {}).items():
        floor_data[domain] = load_test_slices(Path(path))
        if floor_data[domain]["images"].shape[1:] != data[domain]["images"].shape[1:]:
            raise InputDataError(path, f"slice size {floor_data[domain]['images'].shape[1:]} differs from "
                                       f"{test_paths[domain]}'s")
    on_floor = {  # per target domain: its training images, as many as the translations compared with it
        target: floor_rows(len(floor_data[target]["images"]), len(data[source]["images"]))
        for source, target in (DOMAINS[way] for way in directions) if target in floor_data
    }
    image_sets = {domain: data[domain]["images"] for domain in ("a", "b")} | translated | {
        f"{FLOOR_SET}_{domain}": floor_data[domain]["images"][rows] for domain, rows in on_floor.items()}
    features, radiomic_rows, problems = inception_and_radiomic_features(
        image_sets, inception_weights, frd, frd_max_images, batch_size, device)

    classifier_info, classifier_problem = None, "no classifier given"
    if classifier is not None:
        from pipeline.evaluate.measures.classifier import load_classifier, probability_of_b

        network, checkpoint = load_classifier(classifier, device)
        classifier_problem = None
        p_b_real = {d: probability_of_b(network, checkpoint, data[d]["images"], batch_size) for d in ("a", "b")}
        correct = np.concatenate([p_b_real["a"] <= 0.5, p_b_real["b"] > 0.5]).astype(np.float64)
        test_subjects = np.array([f"{d}:{s}" for d in ("a", "b") for s in data[d]["subject_ids"].astype(str)])
        per_class = {d: float(np.mean(correct[: len(p_b_real["a"])] if d == "a" else correct[len(p_b_real["a"]) :]))
                     for d in ("a", "b")}
        labels = np.repeat([0, 1], [len(p_b_real["a"]), len(p_b_real["b"])])
        check = real_test_check(np.concatenate([p_b_real["a"], p_b_real["b"]]), labels, test_subjects, policy,
                                *acceptance(checkpoint), class_names=("a", "b"))
        classifier_info = {
            "path": str(classifier),
            "sha256": file_sha256(classifier),
            "domain_names": list(checkpoint["domain_names"]),
            "compares": "classifier's prediction vs the true domain of the real test slices of a and b",
            "test_accuracy": summarise(correct, test_subjects, policy, share=True),
            "test_accuracy_per_domain": per_class,
            "test_balanced_accuracy": float(np.mean(list(per_class.values()))),
            "real_test": check,
        }

    results: dict[str, dict] = {}
    per_image_values: dict[str, np.ndarray] = {}
    for way, name in directions.items():
        source, target = DOMAINS[way]
        block, values = direction_metrics(
            way,
            data[source],
            data[target],
            translated[way],
            reconstructed[way],
            modalities,
            normalisation,
            ct_window,
            policy,
            body_threshold_hu,
        )
        compares = f"{block['n_source']} translations vs {block['n_target']} real {target} images"
        distances = distribution_block(
            np.arange(len(data[target]["images"])), np.arange(len(translated[way])), data[target]["subject_ids"],
            data[source]["subject_ids"], features, radiomic_rows, problems, fid_eps, policy, compares, sets=(target, way))
        block |= {key: distances[key] for key in ("fid", "kid", "frd")}
        if target in on_floor:
            floor_subjects = floor_data[target]["subject_ids"].astype(str)[on_floor[target]]
            block["floor"] = floor_block(
                np.arange(len(data[target]["images"])), data[target]["subject_ids"], floor_subjects,
                len(translated[way]), features, radiomic_rows, problems, fid_eps, policy,
                f"{len(floor_subjects)} real {target} training images ({len(np.unique(floor_subjects))} subjects) vs "
                f"{block['n_target']} real {target} test images", sets=(target, f"{FLOOR_SET}_{target}"))
        else:
            block["floor"] = unavailable_floor(f"no training slices of domain {target} given (--train-{target})")
        if classifier_problem is None:
            block["classifier"], classifier_values = classifier_share_block(
                probability_of_b(network, checkpoint, translated[way], batch_size), target,
                data[source]["subject_ids"], policy, check,
            )
            values |= classifier_values
        else:
            block["classifier"] = {"reason": classifier_problem}
        stego, stego_values = steganography_check(
            data[source]["images"], translated[way], values["ssim_cycle"],
            lambda images, back=REVERSE[way]: translate_all(model, back, images, batch_size),
            blur_sigma=stego_blur_sigma, noise_sigma=stego_noise_sigma, max_drop=stego_max_drop, seed=seed,
        )
        for kind in ("blur", "noise"):
            interval = intervals.mean_ci(stego_values[f"stego_{kind}_drop"], data[source]["subject_ids"], policy)
            stego[kind] |= {"ci95_drop": interval["ci95"], "ci95_drop_reason": interval["ci95_reason"],
                            "ci_method": interval["ci_method"]}
        block["steganography"] = stego
        values |= stego_values
        block["regions"], block["regions_reason"], region_values = regions_block(
            data[source], translated[way], policy
        )
        values |= region_values
        if block["paired"] is None:
            block["paired_reason"] = f"no partner images in {test_paths[source]}"
        results[name] = block
        per_image_values |= {f"{name}_{key}": array for key, array in values.items()}

    metrics = {
        "schema_version": 1,
        "direction_names": list(results),
        "inputs": {
            domain: {
                "path": str(path),
                "sha256": file_sha256(path),
                "modality": modalities[domain],
                "normalisation": normalisation[domain],
                "n_images": len(data[domain]["images"]),
                "image_shape": list(data[domain]["images"].shape[1:]),
            }
            for domain, path in test_paths.items()
        },
        "settings": {
            "data_range": DATA_RANGE,
            "ssim": SSIM_SETTINGS,
            "psnr": "dB; skimage.metrics.peak_signal_noise_ratio per image, mean over images with finite PSNR",
            "mae": "mean absolute difference per image in [0,1] units, mean over images",
            "ct_body": "paired.ct_body: synthetic CT vs the partner CT in full HU inside its body mask, as SynthRAD "
            "scores it (pipeline.evaluate.measures.synthetic_ct)",
            "summary": "mean and population std (ddof 0) over images",
            "ct_window": None
            if ct_window is None
            else {"center": float(ct_window[0]), "width": float(ct_window[1])},
            "mri_percentiles": [float(p) for p in mri_percentiles],
            "features": fid_module.FEATURE_SETTINGS,
            "inception_weights": str(inception_weights),
            "fid_eps": fid_eps,
            "frd": frd_module.FRD_SETTINGS | {"enabled": frd, "max_images_per_set": frd_max_images},
            "intervals": policy.describe() | {"fid": "interval only when both sets hold at most 2048 images"},
            "classifier": "share of translations with P(intended domain) > 0.5 under the domain classifier; null "
            "with the reason when the classifier fails its real-test check (classifier.real_test: AUC below min_auc "
            "or its interval reaching 0.5, or mean P(true class) below min_confidence)",
            "steganography": {"blur_sigma_px": stego_blur_sigma, "noise_sigma": stego_noise_sigma,
                              "max_drop": stego_max_drop},
            "regions": "change = |G(x) - x| on the native grid; share inside = sum inside region_mask / sum overall",
            "seed": seed,
        },
    } | ({"classifier": classifier_info} if classifier_info else {}) | results

    if samples_out is not None:
        save_samples(samples_out, data, directions, translated, reconstructed, n_figure_examples, histogram_bins)
    if per_image_out is not None:
        with atomic_path(per_image_out) as tmp:
            np.savez_compressed(tmp, **per_image_values)
    return metrics


def save_samples(
    target: Path,
    data: dict[str, dict[str, np.ndarray]],
    directions: dict[str, str],
    translated: dict[str, np.ndarray],
    reconstructed: dict[str, np.ndarray],
    n_examples: int,
    histogram_bins: int = 64,
) -> None:
    """samples.npz: per way (a_to_b, b_to_a) its fixed source / translated / reconstructed examples,
    real target examples, the source's region masks (when given), and intensity histograms over
    all test images of the real target domain and of the translations (shared ``hist_edges``)."""
    edges = np.linspace(0.0, 1.0, histogram_bins + 1)
    arrays: dict[str, np.ndarray] = {"hist_edges": edges}
    for way, name in directions.items():
        src, tgt = data[DOMAINS[way][0]], data[DOMAINS[way][1]]
        picks = fixed_sample_indices(len(src["images"]), n_examples)
        arrays |= {
            f"{way}_source": src["images"][picks],
            f"{way}_translated": translated[way][picks],
            f"{way}_reconstructed": reconstructed[way][picks],
            f"{way}_real_target": tgt["images"][fixed_sample_indices(len(tgt["images"]), n_examples)],
            f"{way}_subject_ids": src["subject_ids"][picks].astype(str),
            f"{way}_slice_index": src["slice_index"][picks],
            f"{way}_name": np.array(name),
            f"{way}_hist_real_target": np.histogram(tgt["images"], bins=edges)[0],
            f"{way}_hist_translated": np.histogram(translated[way], bins=edges)[0],
        }
        if "region_mask" in src:
            arrays[f"{way}_region_mask"] = src["region_mask"][picks]
    with atomic_path(target) as tmp:
        np.savez_compressed(tmp, **arrays)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=(
        "Translation evaluator CLI: python -m pipeline.evaluate --model M --test-a A --test-b B --out metrics.json ..."))
    cli.add_common_arguments(parser, "trained model.pt (pipeline.models.load_trained)")
    parser.add_argument("--test-a", type=Path, required=True, help="test.npz of domain a")
    parser.add_argument("--test-b", type=Path, required=True, help="test.npz of domain b")
    parser.add_argument("--train-a", type=Path, help="train.npz of domain a: the real-vs-real floor of b_to_a")
    parser.add_argument("--train-b", type=Path, help="train.npz of domain b: the real-vs-real floor of a_to_b")
    parser.add_argument(
        "--inception-weights", type=Path, required=True, help="pt_inception-2015-12-05-6726825d.pth"
    )
    parser.add_argument(
        "--samples-out", type=Path, help="samples.npz (fixed examples) for the triplet figure"
    )
    parser.add_argument("--per-image-out", type=Path, help="npz of every per-image value (bootstrap input)")
    parser.add_argument(
        "--direction-names", nargs=2, default=["ct_to_mri", "mri_to_ct"], metavar=("A_TO_B", "B_TO_A")
    )
    parser.add_argument(
        "--modalities", nargs=2, default=["ct", "mri"], metavar=("A", "B"), help="modality of a and b"
    )
    parser.add_argument(
        "--ct-window",
        nargs=2,
        type=float,
        metavar=("CENTER", "WIDTH"),
        help="HU window the CT slices were made with; omit when each series used its own (no MAE in HU then)",
    )
    parser.add_argument(
        "--mri-percentiles", nargs=2, type=float, default=[0.5, 99.5], metavar=("LOW", "HIGH")
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fid-eps", type=float, default=1e-6)
    parser.add_argument("--n-figure-examples", type=int, default=4, help="fixed test images per direction")
    parser.add_argument("--classifier", type=Path, help="classifier.pt (pipeline.evaluate.measures.classifier)")
    parser.add_argument("--skip-frd", action="store_true", help="leave FRD null (PyRadiomics ~0.4 s an image)")
    parser.add_argument("--frd-max-images", type=int, default=200, help="evenly spaced images per set in FRD")
    parser.add_argument("--stego-blur-sigma", type=float, default=1.0, help="Gaussian blur of G(x), pixels")
    parser.add_argument("--stego-noise-sigma", type=float, default=0.02, help="Gaussian noise on G(x), [0,1] units")
    parser.add_argument("--stego-max-drop", type=float, default=0.1, help="cycle-SSIM drop that raises the flag")
    parser.add_argument("--histogram-bins", type=int, default=64)
    parser.add_argument("--body-threshold-hu", type=float, default=BODY_THRESHOLD_HU,
                        help="body mask of the synthetic-CT block: real CT above this HU (largest component, filled)")
    parser.add_argument("--diff-upscale-size", type=int, default=256, help="bicubic size of the difference maps")
    parser.add_argument(
        "--triplets", type=Path, help="also draw the triplet figure here (needs --samples-out)"
    )
    parser.add_argument(
        "--labels", nargs=2, default=["CT", "T2 MRI"], metavar=("A", "B"), help="domain names in figures"
    )
    parser.add_argument("--sample-grid", type=Path, help="draw real vs translated samples here (needs --samples-out)")
    parser.add_argument("--difference-maps", type=Path, help="draw |G(x) - x| maps here (needs --samples-out)")
    parser.add_argument("--histograms", type=Path, help="draw intensity histograms here (needs --samples-out)")
    parser.add_argument("--metrics-table", type=Path, help="draw the headline metrics as a table image here")
    parser.add_argument("--history", type=Path, help="training history.csv, for --loss-curves")
    parser.add_argument("--loss-curves", type=Path, help="also draw the loss curves here (needs --history)")
    parser.add_argument(
        "--extra-figures", type=Path, nargs="*", default=[], help="more files to log to MLflow"
    )
    args = parser.parse_args(argv)
    cli.require_with(parser, args, ("triplets", "sample_grid", "difference_maps", "histograms"), "samples_out")
    if (args.loss_curves is None) != (args.history is None):
        parser.error("--loss-curves and --history go together")
    return args


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.evaluate`` hands a translator's model.pt here: evaluate both directions,
    optionally draw the figures (triplets, sample grid, difference maps, histograms, metrics table,
    loss curves), write metrics.json last, optionally log to the training's MLflow run."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from pipeline import figures

    def evaluate(model, device: str) -> dict:
        return evaluate_translation(
            model,
            args.test_a,
            args.test_b,
            inception_weights=args.inception_weights,
            directions={"a_to_b": args.direction_names[0], "b_to_a": args.direction_names[1]},
            modalities={"a": args.modalities[0], "b": args.modalities[1]},
            ct_window=None if args.ct_window is None else tuple(args.ct_window),
            mri_percentiles=tuple(args.mri_percentiles),
            batch_size=args.batch_size,
            fid_eps=args.fid_eps,
            seed=args.seed,
            n_figure_examples=args.n_figure_examples,
            device=device,
            samples_out=args.samples_out,
            per_image_out=args.per_image_out,
            classifier=args.classifier,
            frd=not args.skip_frd,
            frd_max_images=args.frd_max_images,
            intervals_policy=cli.interval_policy(args),
            stego_blur_sigma=args.stego_blur_sigma,
            stego_noise_sigma=args.stego_noise_sigma,
            stego_max_drop=args.stego_max_drop,
            histogram_bins=args.histogram_bins,
            train_paths={d: p for d, p in (("a", args.train_a), ("b", args.train_b)) if p is not None},
            body_threshold_hu=args.body_threshold_hu,
        )

    labels = tuple(args.labels)
    samples = args.samples_out

    def draw_figures(metrics: dict) -> list[Path]:
        return cli.draw([
            (args.triplets, lambda out: figures.triplets(samples, out, labels=labels)),
            (args.sample_grid, lambda out: figures.sample_grid(samples, out, labels=labels)),
            (args.difference_maps, lambda out: figures.difference_maps(samples, out, labels, args.diff_upscale_size)),
            (args.histograms, lambda out: figures.intensity_histograms(
                samples, out, labels=labels,
                normalisation=tuple(metrics["inputs"][d]["normalisation"] for d in ("a", "b")))),
            (args.metrics_table, lambda out: figures.metrics_table(metrics, out)),
            (args.loss_curves, lambda out: cli.training_curves(args.model, args.history, out)),
        ])

    return cli.run_evaluation(args, "translation", "a translator", evaluate, draw_figures,
                              outputs=[args.samples_out, args.per_image_out, *args.extra_figures],
                              report=report, log=log)


def report(metrics: dict) -> None:
    """Log the headline of each direction, and a warning when the steganography check flags it."""
    for name in metrics["direction_names"]:
        block, fid = metrics[name], metrics[name]["fid"]
        frd = block["frd"]
        log.info(
            "%s: SSIM %.3f, cycle SSIM %.3f, FID %s, FRD %s",
            name,
            block["ssim"]["mean"],
            block["ssim_cycle"]["mean"],
            f"{fid['value']:.2f}" if fid["value"] is not None else f"null ({fid['reason']})",
            f"{frd['value']:.2f}" if frd["value"] is not None else f"null ({frd['reason']})",
        )
        if block["steganography"]["flagged"]:
            log.warning("%s: cycle SSIM drops by more than %g when G(x) is blurred or noised: the generator "
                        "may hide the source in imperceptible signal", name, block["steganography"]["max_drop"])


if __name__ == "__main__":
    sys.exit(main())
