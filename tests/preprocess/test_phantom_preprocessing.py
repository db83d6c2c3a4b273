"""The preprocessing chain on head phantoms with known anatomy: window -> register -> mask.

Phantom subjects differ by a random scale, rotation, shift and a smooth deformation, and carry
their true brain and head masks; registration must map every brain onto the reference's brain,
the head-holder mask must keep the head and drop the holder, and registration must be repeatable
to the bit. Small grids (2.4 mm pixels, 3 mm working voxels) keep the whole file near a minute.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from pipeline.preprocess import register
from pipeline.preprocess.mask_headholder import build_headholder_mask
from pipeline.preprocess.window import window_ct
from pipeline.sources.phantom_head import write_phantom_dataset

pytestmark = pytest.mark.slow

SEED = 20261123
PHANTOM = {"ct_matrix": 96, "ct_pixel_mm": 2.4}
VOXEL_MM = 3.0
N_SUBJECTS = 3


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _on_grid(mask_path: Path, grid: nib.Nifti1Image) -> nib.Nifti1Image:
    """A raw-grid truth mask resampled onto a windowed grid (nearest neighbour: stays binary)."""
    return resample_from_to(nib.load(mask_path), grid, order=0)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("phantom_chain")
    raw = root / "raw"
    write_phantom_dataset(raw, "CT", N_SUBJECTS, 0, SEED, **PHANTOM)
    ids = [f"ct{index:03d}" for index in range(1, N_SUBJECTS + 1)]
    windowed = {
        sid: window_ct(raw / sid, root / "windowed" / f"{sid}.nii.gz", voxel_mm=VOXEL_MM) for sid in ids
    }
    reference_id = register.choose_reference(windowed, root / "reference.json", SEED)
    registered = {}
    for sid in ids:
        registered[sid] = root / "registered" / f"{sid}.nii.gz"
        qc = register.register_to_reference(
            windowed[sid],
            windowed[reference_id],
            registered[sid],
            root / "registered" / f"{sid}.transforms",
            root / "registered" / f"{sid}.qc.json",
            SEED,
        )
        assert qc["status"] == "ok", qc["reason"]
    return {
        "root": root,
        "raw": raw,
        "ids": ids,
        "windowed": windowed,
        "reference": reference_id,
        "registered": registered,
    }


def test_registered_brains_overlap_the_reference_brain(chain):
    reference_grid = nib.load(chain["windowed"][chain["reference"]])
    truth = chain["raw"] / "truth"
    reference_brain = np.asanyarray(
        _on_grid(truth / f"{chain['reference']}_brain.nii.gz", reference_grid).dataobj
    ) > 0
    work = chain["root"] / "brains"
    work.mkdir()
    for sid in chain["ids"]:
        if sid == chain["reference"]:
            continue
        brain = _on_grid(truth / f"{sid}_brain.nii.gz", nib.load(chain["windowed"][sid]))
        as_float = np.asanyarray(brain.dataobj).astype(np.float32)
        nib.save(nib.Nifti1Image(as_float, brain.affine), work / f"{sid}.nii.gz")
        register.apply_subject_transforms(
            work / f"{sid}.nii.gz",
            chain["windowed"][chain["reference"]],
            chain["root"] / "registered" / f"{sid}.transforms",
            work / f"{sid}.warped.nii.gz",
        )
        warped = nib.load(work / f"{sid}.warped.nii.gz").get_fdata() > 0.5
        assert _dice(warped, reference_brain) >= 0.95, sid


def test_headholder_mask_keeps_the_head_and_drops_the_holder(chain):
    reference_path = chain["registered"][chain["reference"]]
    reference = nib.load(reference_path)
    mask_path = chain["root"] / "mask.nii.gz"
    build_headholder_mask(reference_path, mask_path)
    mask = np.asanyarray(nib.load(mask_path).dataobj) > 0
    head = np.asanyarray(
        _on_grid(chain["raw"] / "truth" / f"{chain['reference']}_head.nii.gz", reference).dataobj
    ) > 0
    # Saturated in the brain window yet outside the true head: the holder (scalp and skin are soft).
    holder = (reference.get_fdata() >= 0.95) & ~head
    assert holder.sum() > 50
    assert _dice(mask, head) >= 0.97
    assert not (mask & holder).any()


def test_registration_is_bit_identical_when_repeated(chain):
    moving = next(sid for sid in chain["ids"] if sid != chain["reference"])
    again = chain["root"] / "again"
    register.register_to_reference(
        chain["windowed"][moving],
        chain["windowed"][chain["reference"]],
        again / f"{moving}.nii.gz",
        again / f"{moving}.transforms",
        again / f"{moving}.qc.json",
        SEED,
    )
    first = nib.load(chain["registered"][moving]).get_fdata()
    second = nib.load(again / f"{moving}.nii.gz").get_fdata()
    assert first.shape == second.shape
    assert np.array_equal(first, second)
    for name in (register.AFFINE_FILE, register.WARP_FILE):
        first_file = chain["root"] / "registered" / f"{moving}.transforms" / name
        assert first_file.read_bytes() == (again / f"{moving}.transforms" / name).read_bytes(), name
