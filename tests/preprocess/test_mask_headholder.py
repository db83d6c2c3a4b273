"""Head-holder masking on a synthetic windowed CT: the plate goes, the head stays."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess import mask_headholder

VOXEL_MM = 2.0
SHAPE = (84, 104, 80)
SUPERSAMPLING = 2  # points per voxel and axis, for partial volume at tissue borders
BRAIN_RADII_MM = np.array([55.0, 70.0, 57.0])
SKULL_MM, SCALP_MM = 7.0, 5.0
PLATE_MM, PLATE_GAP_MM = 2.5, 4.0
HU = {"air": -1000.0, "brain": 35.0, "ventricle": 5.0, "bone": 1200.0, "scalp": -60.0, "plate": 800.0}


def _affine() -> np.ndarray:
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -(np.array(SHAPE) - 1) / 2 * VOXEL_MM
    return affine


def _phantom(struts: bool) -> tuple[np.ndarray, np.ndarray]:
    """Brain-windowed (40/80 HU) CT with a curved plate behind the head, and the true head mask.

    Distances to an ellipsoidal brain surface are approximated by scaling the radius, which is
    close enough for shells a few mm thick. ``struts`` adds thin bars joining plate and skull.
    """
    offsets = (np.arange(SUPERSAMPLING) + 0.5) / SUPERSAMPLING - 0.5
    hounsfield = np.zeros(SHAPE, np.float64)
    head_fraction = np.zeros(SHAPE, np.float64)
    centre = (np.array(SHAPE) - 1) / 2
    ijk = np.indices(SHAPE, dtype=np.float64)
    for dx in offsets:
        for dy in offsets:
            for dz in offsets:
                x, y, z = [(ijk[a] + d - centre[a]) * VOXEL_MM for a, d in enumerate((dx, dy, dz))]
                scaled = np.sqrt(
                    (x / BRAIN_RADII_MM[0]) ** 2 + (y / BRAIN_RADII_MM[1]) ** 2 + (z / BRAIN_RADII_MM[2]) ** 2
                )
                depth = (scaled - 1) * BRAIN_RADII_MM.mean()  # mm outside the brain surface
                value = np.full(SHAPE, HU["air"])
                value[depth < SKULL_MM + SCALP_MM] = HU["scalp"]
                value[depth < SKULL_MM] = HU["bone"]
                value[depth < 0] = HU["brain"]
                ventricles = (
                    np.sqrt(((np.abs(x) - 8) / 6) ** 2 + ((y + 5) / 22) ** 2 + ((z - 5) / 10) ** 2) < 1
                )
                value[ventricles] = HU["ventricle"]
                head = depth < SKULL_MM + SCALP_MM
                # Curved plate under the back of the head (posterior = -y), at a gap from the scalp.
                plate_radius = BRAIN_RADII_MM[1] + SKULL_MM + SCALP_MM + PLATE_GAP_MM
                radial = np.sqrt(x**2 + y**2)
                plate = (
                    (np.abs(radial - plate_radius - PLATE_MM / 2) < PLATE_MM / 2)
                    & (y < -30)
                    & (np.abs(z) < 70)
                )
                value[plate & ~head] = HU["plate"]
                if struts:  # through the scalp, so the plate touches the skull
                    value[
                        (np.abs(x) < 2)
                        & (np.abs(z - 20) < 2)
                        & (y < -50)
                        & (depth >= SKULL_MM - 1)
                        & (radial < plate_radius)
                    ] = HU["plate"]
                hounsfield += value
                head_fraction += head
    samples = SUPERSAMPLING**3
    windowed = np.clip((hounsfield / samples - 0.0) / 80.0, 0, 1).astype(np.float32)
    return windowed, head_fraction / samples >= 0.5


@pytest.fixture(scope="module", params=[False, True], ids=["plate", "plate-with-struts"])
def phantom(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mask")
    windowed, head = _phantom(struts=request.param)
    path = folder / "reference.nii.gz"
    nib.save(nib.Nifti1Image(windowed, _affine()), path)
    return {"path": path, "head": head, "windowed": windowed, "folder": folder}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_mask_removes_the_plate_and_keeps_the_head(phantom):
    out = phantom["folder"] / "mask.nii.gz"
    erosions = mask_headholder.build_headholder_mask(phantom["path"], out)
    mask = np.asarray(nib.load(out).dataobj) > 0
    assert nib.load(out).get_data_dtype() == np.uint8
    assert 1 <= erosions <= 3
    beyond_head_mm = ndimage.distance_transform_edt(~phantom["head"]) * VOXEL_MM
    plate = (phantom["windowed"] >= 0.95) & (beyond_head_mm > VOXEL_MM)  # a strut's root may touch the scalp
    assert plate.sum() > 500
    assert not (mask & plate).any()
    assert _dice(mask, phantom["head"]) >= 0.97
    # The brain inside the skull is filled in: every brain voxel is kept.
    brain = (phantom["windowed"] > 0.2) & (phantom["windowed"] < 0.95) & phantom["head"]
    assert mask[brain].mean() > 0.999


def test_apply_mask_and_overlay(phantom, tmp_path):
    mask_path = tmp_path / "mask.nii.gz"
    reference_json = tmp_path / "reference.json"
    reference_json.write_text(json.dumps({"reference": "reference", "path": str(phantom["path"])}))
    mask_headholder.main(
        ["build", "--reference-json", str(reference_json), "--out", str(mask_path), "--margin-mm", "5"]
    )
    mask_headholder.main(
        [
            "apply",
            "--image",
            str(phantom["path"]),
            "--mask",
            str(mask_path),
            "--out",
            str(tmp_path / "m.nii.gz"),
        ]
    )
    masked = nib.load(tmp_path / "m.nii.gz").get_fdata(dtype=np.float32)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    assert np.array_equal(masked[mask], phantom["windowed"][mask])
    assert not masked[~mask].any()
    mask_headholder.qc_overlay(tmp_path / "m.nii.gz", mask_path, tmp_path / "overlay.png")
    assert (tmp_path / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gives_up_when_erosions_cannot_remove_the_holder(phantom, tmp_path):
    with pytest.raises(InputDataError, match="reference.nii.gz.*max_erosions"):
        mask_headholder.build_headholder_mask(phantom["path"], tmp_path / "mask.nii.gz", max_erosions=0)
    assert not (tmp_path / "mask.nii.gz").exists()


def test_rejects_bad_knobs_and_foreign_grids(phantom, tmp_path):
    with pytest.raises(ConfigError, match="threshold"):
        mask_headholder.build_headholder_mask(phantom["path"], tmp_path / "mask.nii.gz", threshold=1.5)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), other)
    with pytest.raises(InputDataError, match="other.nii.gz.*not on the grid"):
        mask_headholder.apply_mask(other, phantom["path"], tmp_path / "out.nii.gz")
