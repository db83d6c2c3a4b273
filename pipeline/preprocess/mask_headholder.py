"""Masked stage: remove the CT head-holder with one mask built on the registered reference.

Every CT subject is registered onto the reference, so one head mask serves them all
(report 001, section 2.1). The mask is built by mathematical morphology:

1. threshold the windowed reference so that bone and the holder survive, brain and air do not;
2. erode until the holder is gone: the holder is a thin plate, thinner than the skull, so it
   vanishes first. "Gone" means that no thresholded voxel is left outside the (hole-filled)
   largest component; bright spots *inside* the head (calcifications, blood) do not count;
3. keep the largest component (the skull), dilate it back as many times, then by a margin in mm
   that covers the scalp;
4. fill holes, per axial slice and in 3-D, so that the brain inside the skull is kept.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from scipy import ndimage

from pipeline.atomic import atomic_path
from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess import OPTIONAL, run_commands_cli, stage_parser
from pipeline.preprocess.extract_slices import load_volume, read_reference_json, to_display

_log = logging.getLogger(__name__)

# 6-connected cross: each erosion peels one voxel off every face, so a plate n voxels thick is
# gone after ceil(n / 2) erosions.
_STRUCTURE = ndimage.generate_binary_structure(3, 1)


def _load(path: str | Path) -> nib.Nifti1Image:
    image = load_volume(path)
    try:
        values = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for a truncated or corrupt file
        raise InputDataError(path, f"not a readable NIfTI image ({exc})") from exc
    if not np.all(np.isfinite(values)):
        raise InputDataError(path, "contains NaN or infinite voxels")
    return image


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill in 3-D and in every axial slice: a skull open at its base still encloses each mid slice."""
    per_slice = np.stack([ndimage.binary_fill_holes(mask[:, :, z]) for z in range(mask.shape[2])], axis=2)
    return ndimage.binary_fill_holes(mask) | per_slice


def _erode_until_holder_gone(
    bone: np.ndarray, max_erosions: int, path: Path, threshold: float
) -> tuple[np.ndarray, int]:
    """The largest component once nothing bright is left outside it, and the erosions that took."""
    eroded = bone
    for erosions in range(max_erosions + 1):
        if erosions:
            eroded = ndimage.binary_erosion(eroded, _STRUCTURE)
        skull = _largest_component(eroded)
        if not skull.any():
            break
        if not (eroded & ~fill_holes(skull)).any():
            return skull, erosions
    raise InputDataError(
        path,
        f"head holder not removed by up to {max_erosions} erosions at threshold {threshold} "
        f"(stopped after {erosions}, {int(skull.sum())} skull voxels left); "
        "raise max_erosions or check the reference",
    )


def build_headholder_mask(
    reference_path: str | Path,
    out_mask: str | Path,
    threshold: float = 0.95,
    max_erosions: int = 6,
    margin_mm: float = 5.0,
) -> int:
    """Build the head mask (uint8 NIfTI on the reference grid); returns the erosions it took.

    threshold: windowed value ([0, 1]) at or above which a voxel counts as bone or holder; with
        the brain window (40/80 HU) 0.95 is 76 HU: bone and holder saturate, brain stays below.
    max_erosions: give up (InputDataError) if the holder is still there after this many.
    margin_mm: extra dilation beyond the skull, to keep the scalp (typically ~5 mm).
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"mask_headholder.threshold: must be in (0, 1], got {threshold}")
    if max_erosions < 0 or margin_mm < 0:
        raise ConfigError(
            f"mask_headholder: max_erosions and margin_mm must be >= 0, got {max_erosions}, {margin_mm}"
        )
    reference = _load(reference_path)
    bone = np.asanyarray(reference.dataobj) >= threshold
    if not bone.any():
        raise InputDataError(
            reference_path, f"no voxel at or above threshold {threshold}: is it a windowed CT?"
        )

    skull, erosions = _erode_until_holder_gone(bone, max_erosions, Path(reference_path), threshold)
    restored = ndimage.binary_dilation(skull, _STRUCTURE, iterations=erosions) if erosions else skull
    voxel_mm = np.asarray(reference.header.get_zooms()[:3], dtype=float)
    widened = ndimage.distance_transform_edt(~restored, sampling=voxel_mm) <= margin_mm
    head = fill_holes(widened)

    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    with atomic_path(out_mask) as tmp:
        nib.save(nib.Nifti1Image(head.astype(np.uint8), reference.affine, header), tmp)
    _log.info(
        "%s: holder gone after %d erosion(s); head mask %d voxels", reference_path, erosions, int(head.sum())
    )
    return erosions


def _check_same_grid(
    image: nib.Nifti1Image, image_path: Path, mask: nib.Nifti1Image, mask_path: Path
) -> None:
    if image.shape != mask.shape or not np.allclose(image.affine, mask.affine, atol=1e-3):
        raise InputDataError(
            image_path, f"not on the grid of the mask {mask_path} (shape {image.shape} vs {mask.shape})"
        )


def apply_mask(
    image_path: str | Path, mask_path: str | Path, out_path: str | Path, fill_value: float = 0.0
) -> None:
    """Set every voxel outside the head mask to ``fill_value`` (float32, same grid and header)."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    image, mask = _load(image_path), _load(mask_path)
    _check_same_grid(image, image_path, mask, mask_path)
    masked = np.where(
        np.asanyarray(mask.dataobj) > 0, image.get_fdata(dtype=np.float32), np.float32(fill_value)
    )
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    with atomic_path(out_path) as tmp:
        nib.save(nib.Nifti1Image(masked.astype(np.float32), image.affine, header), tmp)


def qc_overlay(image_path: str | Path, mask_path: str | Path, out_png: str | Path) -> None:
    """Axial and sagittal slices through the mask's centre with its outline: a bad mask shows at once."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    image, mask = _load(image_path), _load(mask_path)
    _check_same_grid(image, image_path, mask, mask_path)
    values = image.get_fdata(dtype=np.float32)
    inside = np.asanyarray(mask.dataobj) > 0
    centre = (
        np.round(ndimage.center_of_mass(inside)).astype(int) if inside.any() else np.array(values.shape) // 2
    )
    x, _, z = centre
    views = {
        f"axial z={z}": (to_display(values[:, :, z]), to_display(inside[:, :, z].astype(float))),
        # Sagittal: superior at the top, anterior on the left.
        f"sagittal x={x}": (values[x].T[::-1, ::-1], inside[x].T[::-1, ::-1].astype(float)),
    }
    figure, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    for axis, (title, (picture, outline)) in zip(axes, views.items()):
        axis.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.contour(outline, levels=[0.5], colors="red", linewidths=0.8)
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    figure.suptitle(image_path.name.split(".")[0], fontsize=10)
    figure.tight_layout()
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("pipeline.preprocess.mask_headholder", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build the head mask on the registered reference")
    reference = build.add_mutually_exclusive_group(required=True)
    reference.add_argument("--reference", type=Path, help="the registered reference volume")
    reference.add_argument("--reference-json", dest="reference_json", type=Path, help="or register's JSON")
    build.add_argument("--out", required=True, type=Path)
    build.add_argument("--threshold", type=float, **OPTIONAL)
    build.add_argument("--max-erosions", dest="max_erosions", type=int, **OPTIONAL)
    build.add_argument("--margin-mm", dest="margin_mm", type=float, **OPTIONAL)

    apply = commands.add_parser("apply", help="mask one registered volume")
    apply.add_argument("--image", required=True, type=Path)
    apply.add_argument("--mask", required=True, type=Path)
    apply.add_argument("--out", required=True, type=Path)
    apply.add_argument("--fill-value", dest="fill_value", type=float, **OPTIONAL)

    overlay = commands.add_parser("overlay", help="QC picture: the mask outline on a volume")
    overlay.add_argument("--image", required=True, type=Path)
    overlay.add_argument("--mask", required=True, type=Path)
    overlay.add_argument("--out", required=True, type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    commands = {
        "build": _build,
        "apply": lambda image, mask, out, **knobs: apply_mask(image, mask, out, **knobs),
        "overlay": lambda image, mask, out: qc_overlay(image, mask, out),
    }
    run_commands_cli(_parser(), commands, argv)


def _build(reference: Path | None, reference_json: Path | None, out: Path, **knobs) -> None:
    if reference_json is not None:
        reference = read_reference_json(reference_json)[1]
    build_headholder_mask(reference, out, **knobs)


if __name__ == "__main__":
    main()
