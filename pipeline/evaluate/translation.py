"""Evaluate a trained two-way translator (CycleGAN) on the held-out test slices.

For each direction: FID/KID of translations against real test images of the target domain,
SSIM between each source and its translation (structure kept, unpaired), cycle SSIM
(x vs F(G(x))), and, where the source npz carries the same anatomy rendered in the other
modality (phantom ``partner``), paired SSIM / PSNR / MAE, with MAE in HU when the target is CT.
Every block states the data range and the normalisation its numbers depend on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.hashing import file_sha256
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.evaluate import fid as fid_module
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
RESERVED_KEYS = {"schema_version", "direction_names", "inputs", "settings", "model"}
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


def summarise(values: np.ndarray) -> dict:
    """Mean / std (ddof 0) / n of per-image values; infinities (identical images in PSNR) counted apart."""
    finite = values[np.isfinite(values)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "n": int(values.size),
        "n_infinite": int(values.size - finite.size),
    }


def paired_block(
    translated: np.ndarray,
    partner: np.ndarray,
    subject_ids: np.ndarray,
    target_modality: str,
    normalisation: str,
    ct_window: tuple[float, float] | None,
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
        "ssim": summarise(per_image["ssim"]),
        "psnr": summarise(per_image["psnr"]),
        "mae": summarise(per_image["mae"]),
        "mae_hu": None,
        "mae_hu_reason": None if target_modality == "ct" else "target is not CT",
    }
    if target_modality == "ct" and ct_window is None:
        block["mae_hu_reason"] = "no single CT window (each series used its own), so [0,1] does not map to HU"
    elif target_modality == "ct":
        per_image["mae_hu"] = mae_hu_per_image(partner, translated, ct_window)
        center, width = ct_window
        block["mae_hu"] = summarise(per_image["mae_hu"]) | {
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
) -> tuple[dict, dict[str, np.ndarray]]:
    """Counts, structure and cycle SSIM, and paired metrics of one direction; plus per-image values."""
    source_domain, target_domain = DOMAINS[way]
    values = {
        "ssim": ssim_per_image(source["images"], translated),
        "ssim_cycle": ssim_per_image(source["images"], reconstructed),
        "subject_ids": source["subject_ids"],
        "slice_index": source["slice_index"],
    }
    block = {
        "direction": way,
        "source_domain": source_domain,
        "target_domain": target_domain,
        "source_modality": modalities[source_domain],
        "target_modality": modalities[target_domain],
        "n_source": len(source["images"]),
        "n_source_subjects": len(np.unique(source["subject_ids"])),
        "n_target": len(target["images"]),
        "n_target_subjects": len(np.unique(target["subject_ids"])),
        "ssim": summarise(values["ssim"])
        | {
            "compares": "source x vs its translation G(x) (unpaired: structure kept across modalities)",
            "data_range": DATA_RANGE,
            "normalisation": f"source {normalisation[source_domain]}; translation {normalisation[target_domain]}",
        },
        "ssim_cycle": summarise(values["ssim_cycle"])
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
            source["subject_ids"][has_partner],
            modalities[target_domain],
            normalisation[target_domain],
            ct_window,
        )
        values |= {f"paired_{key}": array for key, array in paired_values.items()}
        values["paired_index"] = np.flatnonzero(has_partner)
    return block, values


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
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    fid_eps: float = 1e-6,
    seed: int = 0,
    n_figure_examples: int = 4,
    device: str = "cpu",
    samples_out: Path | None = None,
    per_image_out: Path | None = None,
) -> dict:
    """Metrics of both translation directions on the test slices, as the dict written to metrics.json.

    directions: names of the two ways, default {"a_to_b": "ct_to_mri", "b_to_a": "mri_to_ct"}.
    modalities: modality per domain ("ct", "mr"/"mri", or other; any case), default {"a": "ct", "b": "mri"};
        decides the normalisation statement and whether MAE is also given in HU.
    ct_window: (center, width) in HU the CT slices were windowed with (default brain 40/80);
        None when each series used its own DICOM window (then no MAE in HU).
    mri_percentiles: the percentiles MR slices were normalised with (default 0.5/99.5); stated only.
    batch_size: images per translator / Inception call (default 16).
    kid_subsets, kid_subset_size: KID subsets and their size (default 100 x 1000, shrunk to the set size).
    fid_eps: diagonal offset used when the covariance product is singular (default 1e-6).
    seed: KID subset sampling seed (default 0).
    n_figure_examples: fixed test images per direction saved to ``samples_out`` (default 4).
    device: where Inception runs (default cpu).
    per_image_out: optional npz with every per-image value (for a bootstrap over subjects).
    """
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
        )
        if weights_problem is None:
            block |= fid_module.distribution_distances(
                features[target], features[way], kid_subsets, kid_subset_size, seed=seed, eps=fid_eps
            )
            block["fid"]["compares"] = (
                f"{block['n_source']} translations vs {block['n_target']} real {target} images"
            )
        else:
            block |= fid_module.unavailable_distances(weights_problem)
            block["fid"]["compares"] = None
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
            "kid_subsets": kid_subsets,
            "kid_subset_size": kid_subset_size,
            "fid_eps": fid_eps,
            "seed": seed,
        },
    } | results

    if samples_out is not None:
        save_samples(samples_out, data, directions, translated, reconstructed, n_figure_examples)
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
) -> None:
    """samples.npz: per way (a_to_b, b_to_a) its source / translated / reconstructed fixed examples."""
    arrays: dict[str, np.ndarray] = {}
    for way, name in directions.items():
        src = data[DOMAINS[way][0]]
        picks = fixed_sample_indices(len(src["images"]), n_examples)
        arrays |= {
            f"{way}_source": src["images"][picks],
            f"{way}_translated": translated[way][picks],
            f"{way}_reconstructed": reconstructed[way][picks],
            f"{way}_subject_ids": src["subject_ids"][picks].astype(str),
            f"{way}_slice_index": src["slice_index"][picks],
            f"{way}_name": np.array(name),
        }
    with atomic_path(target) as tmp:
        np.savez_compressed(tmp, **arrays)
