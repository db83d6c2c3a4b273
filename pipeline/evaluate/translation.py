"""Evaluate a trained two-way translator (CycleGAN) on the held-out test slices.

For each direction: FID/KID (standard Inception) and FRD (radiomics) of translations against
real test images of the target domain, SSIM between each source and its translation (structure
kept, unpaired), cycle SSIM (x vs F(G(x))), the steganography check, the share of translations a
real-data classifier assigns to the target domain, the share of change inside a region mask
where the test npz carries one, and, where the source npz carries the same anatomy rendered in
the other modality (phantom ``partner``), paired SSIM / PSNR / MAE, with MAE in HU when the
target is CT. Every block states the data range and the normalisation its numbers depend on;
every measured number carries a 95% interval over subjects (pipeline/evaluate/intervals.py: a subject
bootstrap for per-image metrics, a subject jackknife for FID / KID / FRD), or null with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.hashing import file_sha256
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.evaluate import intervals
from pipeline.evaluate.intervals import IntervalPolicy
from pipeline.evaluate import fid as fid_module
from pipeline.evaluate import frd as frd_module
from pipeline.evaluate.regions import change_inside_mask
from pipeline.evaluate.steganography import steganography_check
from pipeline.evaluate.image_metrics import (
    DATA_RANGE,
    SSIM_SETTINGS,
    mae_hu_per_image,
    mae_per_image,
    psnr_per_image,
    ssim_per_image,
)

REVERSE = {"a_to_b": "b_to_a", "b_to_a": "a_to_b"}
DOMAINS = {"a_to_b": ("a", "b"), "b_to_a": ("b", "a")}
RESERVED_KEYS = {"schema_version", "direction_names", "inputs", "settings", "model", "classifier"}
"""Top-level keys of metrics.json besides the direction blocks (which sit beside them by name)."""


class Translator(Protocol):
    def translate(self, direction: str, images: np.ndarray) -> np.ndarray: ...


def load_test_slices(path: Path) -> dict[str, np.ndarray]:
    """Read a test.npz (contract: images, subject_ids, slice_index, optional partner/has_partner)."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "test slices not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise InputDataError(path, f"not a readable npz file ({err})") from err
    for key in ("images", "subject_ids", "slice_index"):
        if key not in data:
            raise InputDataError(path, f"missing array '{key}'")
    images = data["images"]
    if images.ndim != 3 or len(images) == 0:
        raise InputDataError(path, f"'images' must be a non-empty (N, H, W) stack, got shape {images.shape}")
    if len(data["subject_ids"]) != len(images) or len(data["slice_index"]) != len(images):
        raise InputDataError(path, "'subject_ids' and 'slice_index' must have one entry per image")
    if "partner" in data:
        if data["partner"].shape != images.shape:
            raise InputDataError(
                path, f"'partner' shape {data['partner'].shape} differs from 'images' {images.shape}"
            )
        if "has_partner" not in data or len(data["has_partner"]) != len(images):
            raise InputDataError(path, "'partner' needs a 'has_partner' flag per image")
    for key in ("images", "partner"):
        if key in data:
            values = data[key] if key == "images" else data[key][data["has_partner"].astype(bool)]
            if values.size and (not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0):
                raise InputDataError(path, f"'{key}' must be finite and in [0, 1]")
            data[key] = data[key].astype(np.float32)
    if "region_mask" in data:
        if data["region_mask"].shape != images.shape or data["region_mask"].dtype != bool:
            raise InputDataError(
                path, f"'region_mask' must be bool of the images' shape {images.shape}, got "
                f"{data['region_mask'].dtype} {data['region_mask'].shape}"
            )
    return data


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


def paired_block(
    translated: np.ndarray,
    partner: np.ndarray,
    subject_ids: np.ndarray,
    target_modality: str,
    normalisation: str,
    ct_window: tuple[float, float] | None,
    policy: IntervalPolicy,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Paired metrics of translations against the partner images; also returns the per-image values."""
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
        "mae_hu": None,
        "mae_hu_reason": None if target_modality == "ct" else "target is not CT",
    }
    if target_modality == "ct" and ct_window is None:
        block["mae_hu_reason"] = "no single CT window (each series used its own), so [0,1] does not map to HU"
    elif target_modality == "ct":
        per_image["mae_hu"] = mae_hu_per_image(partner, translated, ct_window)
        center, width = ct_window
        block["mae_hu"] = summarise(per_image["mae_hu"], subject_ids, policy) | {
            "window_center": float(center),
            "window_width": float(width),
            "hu_range": [center - width / 2.0, center + width / 2.0],
            "note": "HU = center - width/2 + v*width; MAE within the window range only (values outside were clipped)",
        }
    return block, per_image


def fixed_sample_indices(n_images: int, n_examples: int) -> np.ndarray:
    """Evenly spaced indices: the same test images every run, spread over subjects and slices."""
    return np.unique(np.linspace(0, n_images - 1, num=min(n_examples, n_images)).round().astype(int))


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
        )
        values |= {f"paired_{key}": array for key, array in paired_values.items()}
        values["paired_index"] = np.flatnonzero(has_partner)
    return block, values


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


def classifier_share_block(
    probability_b: np.ndarray, target_domain: str, subject_ids: np.ndarray, policy: IntervalPolicy
) -> tuple[dict, dict[str, np.ndarray]]:
    """Share of translations the real-data classifier assigns to the target domain (and mean probability)."""
    p_target = probability_b if target_domain == "b" else 1.0 - probability_b
    assigned = (p_target > 0.5).astype(np.float64)
    return {
        "compares": f"classifier trained on real a vs real b, applied to translations G(x); intended class: domain {target_domain}",
        "intended_domain": target_domain,
        "share_intended": summarise(assigned, subject_ids, policy),
        "mean_probability_intended": summarise(p_target, subject_ids, policy),
        "reason": None,
    }, {"classifier_p_intended": p_target}


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
    interval = intervals.ratio_ci(inside, total, subjects, policy)
    return {
        "compares": "sum of |G(x) - x| inside the source's region_mask over the sum everywhere, native grid, all test images",
        "share_inside": share,
        "share_outside": 1.0 - share,
        "ci95_inside": interval["ci95"],
        "ci95_inside_reason": interval["ci95_reason"],
        "ci_method": interval["ci_method"],
        "mask_area_fraction": float(area.mean()),
        "n": len(total),
        "n_subjects": int(len(np.unique(subjects.astype(str)))),
    }, None, {"change_inside": inside, "change_total": total}


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
    classifier: classifier.pt from pipeline.evaluate.classifier (None: classifier blocks null with the reason).
    frd: compute FRD (default True; PyRadiomics costs ~0.4 s per 64x64 image on one core).
    frd_max_images: at most this many evenly spaced images per set enter FRD (default 200).
    intervals_policy: minimum subjects, bootstrap replicates and seed of every interval (intervals.py).
    stego_blur_sigma, stego_noise_sigma, stego_max_drop: steganography check (defaults 1.0 px, 0.02, 0.1).
    histogram_bins: bins over [0, 1] of the intensity histograms saved for the figure (default 64).
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

    weights_problem = fid_module.inception_weights_problem(inception_weights)
    if weights_problem is None:
        try:
            extractor = fid_module.load_inception(inception_weights, device=device)
        except RuntimeError as err:
            weights_problem = (
                f"Inception weights at {inception_weights} do not load into torch-fidelity's network "
                f"({str(err).splitlines()[0][:200]})"
            )
    features: dict[str, np.ndarray] = {}
    if weights_problem is None:
        for domain in ("a", "b"):
            features[domain] = fid_module.inception_features(
                extractor, data[domain]["images"], batch_size, device
            )
        for way in directions:
            features[way] = fid_module.inception_features(extractor, translated[way], batch_size, device)

    frd_picks = {d: fixed_sample_indices(len(data[d]["images"]), frd_max_images) for d in ("a", "b")}
    radiomics: dict[str, np.ndarray] = {}
    frd_problem = None if frd else "FRD switched off (evaluate.frd: false)"
    if frd:
        try:
            for domain in ("a", "b"):
                radiomics[domain] = frd_module.radiomic_features(
                    data[domain]["images"][frd_picks[domain]], desc=f"radiomics real {domain}"
                )[0]
            for way, name in directions.items():
                picks = frd_picks[DOMAINS[way][0]]
                radiomics[way] = frd_module.radiomic_features(translated[way][picks], desc=f"radiomics {name}")[0]
        except (ValueError, RuntimeError) as err:
            frd_problem = f"radiomic feature extraction failed: {str(err)[:200]}"

    classifier_info, classifier_problem = None, "no classifier given"
    if classifier is not None:
        from pipeline.evaluate.classifier import load_classifier, probability_of_b

        network, checkpoint = load_classifier(classifier)
        classifier_problem = None
        p_b_real = {d: probability_of_b(network, checkpoint, data[d]["images"], batch_size) for d in ("a", "b")}
        correct = np.concatenate([p_b_real["a"] <= 0.5, p_b_real["b"] > 0.5]).astype(np.float64)
        test_subjects = np.array([f"{d}:{s}" for d in ("a", "b") for s in data[d]["subject_ids"].astype(str)])
        per_class = {d: float(np.mean(correct[: len(p_b_real["a"])] if d == "a" else correct[len(p_b_real["a"]) :]))
                     for d in ("a", "b")}
        classifier_info = {
            "path": str(classifier),
            "sha256": file_sha256(classifier),
            "domain_names": list(checkpoint["domain_names"]),
            "compares": "classifier's prediction vs the true domain of the real test slices of a and b",
            "test_accuracy": summarise(correct, test_subjects, policy),
            "test_accuracy_per_domain": per_class,
            "test_balanced_accuracy": float(np.mean(list(per_class.values()))),
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
        )
        if weights_problem is None:
            block |= distance_blocks(
                features[target], data[target]["subject_ids"], features[way], data[source]["subject_ids"],
                fid_eps, policy,
            )
            block["fid"]["compares"] = (
                f"{block['n_source']} translations vs {block['n_target']} real {target} images"
            )
        else:
            block |= fid_module.unavailable_distances(weights_problem)
            block["fid"]["compares"] = None
            for key in ("fid", "kid"):
                block[key] |= {"ci95": None, "ci95_reason": weights_problem, "ci_method": "subject_jackknife"}
        if frd_problem is None:
            block["frd"] = frd_block(
                radiomics[target], data[target]["subject_ids"][frd_picks[target]],
                radiomics[way], data[source]["subject_ids"][frd_picks[source]], policy,
            )
        else:
            block["frd"] = unavailable_frd(frd_problem)
        if classifier_problem is None:
            block["classifier"], classifier_values = classifier_share_block(
                probability_of_b(network, checkpoint, translated[way], batch_size), target,
                data[source]["subject_ids"], policy,
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
            "classifier": "share of translations with P(intended domain) > 0.5 under the domain classifier",
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
