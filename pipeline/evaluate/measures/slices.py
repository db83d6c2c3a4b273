"""The slices npz files every evaluation reads (contracts of data/slices/<dataset>/), checked on load.

Each loader names the file and what is wrong with it (InputDataError) instead of letting a
measure fail later on a malformed array: ``load_test_slices`` (images, subject_ids, slice_index;
optional partner / has_partner, region_mask), ``load_labelled_slices`` (plus a 0 / 1 label per
image), ``load_map_slices`` (images with their label_maps). ``fixed_sample_indices`` picks the
same evenly spaced images every run (figures, the sets FRD is computed on).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputDataError


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


def load_labelled_slices(path: Path, label_key: str = "labels") -> dict[str, np.ndarray]:
    """A slices npz with a per-image 0 / 1 label array (contract: ``labels``, 1 = any haemorrhage)."""
    data = load_test_slices(path)
    if label_key not in data:
        raise InputDataError(path, f"missing array '{label_key}' (one 0 / 1 label per image)")
    labels = np.asarray(data[label_key])
    if labels.shape != (len(data["images"]),) or not np.isin(labels, (0, 1)).all():
        raise InputDataError(path, f"'{label_key}' must hold one label 0 or 1 per image, got shape {labels.shape} "
                             f"and values {sorted(np.unique(labels).tolist())[:5]}")
    data[label_key] = labels.astype(np.int64)
    return data


def load_map_slices(path: Path, n_classes: int | None = None) -> dict[str, np.ndarray]:
    """A slices npz with ``label_maps`` (contract of data/slices/<dataset>/), checked."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "slices file not found")
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in ("images", "label_maps", "subject_ids") if key not in data.files]
        if missing:
            raise InputDataError(path, f"no array {missing}: map-to-image slices need images, label_maps, subject_ids")
        out = {key: data[key] for key in data.files}
    images, maps = out["images"], out["label_maps"]
    if images.ndim != 3 or maps.shape != images.shape:
        raise InputDataError(path, f"images {images.shape} and label_maps {maps.shape} must both be (N, H, W)")
    if len(images) == 0:
        raise InputDataError(path, "no slices")
    if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
        raise InputDataError(path, "images must be finite and in [0, 1]")
    if not np.issubdtype(maps.dtype, np.integer) or maps.min() < 0:
        raise InputDataError(path, f"label_maps must hold non-negative class indices, got dtype {maps.dtype}")
    if n_classes is not None and maps.max() >= n_classes:
        raise InputDataError(path, f"label_maps holds class {int(maps.max())}, the label map has {n_classes} classes "
                             "(class indices 0..n-1, not grey values)")
    out["images"] = images.astype(np.float32)
    out["label_maps"] = maps.astype(np.int64)
    return out


def fixed_sample_indices(n_images: int, n_examples: int) -> np.ndarray:
    """Evenly spaced indices: the same test images every run, spread over subjects and slices."""
    return np.unique(np.linspace(0, n_images - 1, num=min(n_examples, n_images)).round().astype(int))
