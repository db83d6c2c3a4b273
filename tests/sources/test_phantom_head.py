"""Tests of the built-in head phantom: file formats, tissue values, head holder, partners, seeds."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pipeline.errors import ConfigError
from pipeline.sources import phantom_head as ph

SEED = 7
N_SUBJECTS = 3
N_PAIRED = 1
# Coarser than the defaults to stay fast, fine enough to resolve skull and head holder.
CT_KNOBS = {"ct_matrix": 192, "ct_pixel_mm": 1.2}
MR_KNOBS = {"mr_voxel_scale": 3.0}
TINY_KNOBS = {"ct_matrix": 64, "ct_pixel_mm": 3.6, "mr_voxel_scale": 4.0}


def _series_dir(dataset: Path, subject_id: str) -> Path:
    return dataset / subject_id / ph.CT_SERIES_FOLDER


def _read_ct(dataset: Path, subject_id: str) -> tuple[np.ndarray, sitk.Image]:
    """HU volume as (columns, rows, slices), the layout of the truth masks, plus the ITK image."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(_series_dir(dataset, subject_id))))
    image = reader.Execute()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32), image


def _truth(dataset: Path, subject_id: str, kind: str) -> nib.Nifti1Image:
    return nib.load(dataset / "truth" / f"{subject_id}_{kind}.nii.gz")


@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "ct_head"
    flags = ["--ct-matrix", str(CT_KNOBS["ct_matrix"]), "--ct-pixel-mm", str(CT_KNOBS["ct_pixel_mm"])]
    ph.main(
        [
            "--modality",
            "CT",
            "--out",
            str(out),
            "--n-subjects",
            str(N_SUBJECTS),
            "--n-paired",
            str(N_PAIRED),
            "--seed",
            str(SEED),
            *flags,
        ]
    )
    return out


@pytest.fixture(scope="module")
def mr_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "mri_t2"
    ph.write_phantom_dataset(out, "MR", N_SUBJECTS, N_PAIRED, SEED, **MR_KNOBS)
    return out


@pytest.fixture(scope="module")
def ct_subject() -> ph.SimulatedSubject:
    return ph.simulate_subject("CT", 1, SEED, ph.PhantomParams(**CT_KNOBS))


@pytest.fixture(scope="module")
def mr_subject() -> ph.SimulatedSubject:
    return ph.simulate_subject("MR", 1, SEED, ph.PhantomParams(**MR_KNOBS))


def test_manifest_lists_every_subject_and_only_held_out_partners(ct_dataset: Path, mr_dataset: Path) -> None:
    for dataset, modality, prefix, other in ((ct_dataset, "CT", "ct", "MR"), (mr_dataset, "MR", "mr", "CT")):
        manifest = pd.read_csv(dataset / "subjects.tsv", sep="\t", dtype=str, keep_default_na=False)
        assert list(manifest.columns) == ph.MANIFEST_COLUMNS
        assert list(manifest.subject_id) == [f"{prefix}{i:03d}" for i in range(1, N_SUBJECTS + 1)]
        assert set(manifest.modality) == {modality}
        assert all((dataset / path).exists() for path in manifest.path)
        paired = manifest.partner_path != ""
        assert list(paired) == [False] * (N_SUBJECTS - N_PAIRED) + [True] * N_PAIRED
        assert set(manifest.partner_modality[paired]) == {other}
        assert set(manifest.partner_modality[~paired]) == {""}
        on_disk = sorted(p.relative_to(dataset).as_posix() for p in (dataset / "partners").iterdir())
        assert on_disk == sorted(manifest.partner_path[paired])
        for subject_id in manifest.subject_id:
            assert _truth(dataset, subject_id, "brain").get_fdata().any()
    assert [p.name for p in ct_dataset.parent.iterdir()] == ["ct_head"], (
        "no temporary left beside the dataset"
    )


def test_ct_series_is_valid_dicom_with_requested_geometry(ct_dataset: Path) -> None:
    files = sorted(_series_dir(ct_dataset, "ct001").glob("*.dcm"))
    assert [f.name for f in files] == [f"CT{k:06d}.dcm" for k in range(36)]
    first = pydicom.dcmread(files[0])
    assert first.Modality == "CT"
    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (first.RescaleSlope, first.RescaleIntercept) == (1, -1024)
    assert (first.WindowCenter, first.WindowWidth) == (40, 80)
    assert first.pixel_array.dtype == np.int16
    assert first.pixel_array.shape == (192, 192)
    assert str(first.PatientName) == first.PatientID == "ct001"
    volume, image = _read_ct(ct_dataset, "ct001")
    assert volume.shape == (192, 192, 36)
    assert image.GetSpacing() == pytest.approx((1.2, 1.2, 5.0))
    # The truth masks' affine is the DICOM geometry in NIfTI's RAS convention.
    itk_affine = np.eye(4)
    itk_affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    itk_affine[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(
        np.diag([-1, -1, 1, 1]) @ itk_affine, _truth(ct_dataset, "ct001", "head").affine, atol=1e-4
    )


def test_ct_dicom_holds_no_dates_or_identifiers(ct_dataset: Path) -> None:
    identifying = {
        "InstitutionName",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientBirthDate",
        "OtherPatientIDs",
    }
    for path in _series_dir(ct_dataset, "ct002").glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        for element in dataset.iterall():
            assert element.VR not in ("DA", "DT", "TM"), f"{path.name}: {element.keyword}"
            assert element.keyword not in identifying
        assert str(dataset.PatientName) == "ct002"


def test_ct_pixels_are_hu_plus_1024_of_the_simulation(
    ct_dataset: Path, ct_subject: ph.SimulatedSubject
) -> None:
    stored = pydicom.dcmread(_series_dir(ct_dataset, "ct001") / "CT000018.dcm").pixel_array
    np.testing.assert_array_equal(stored, np.round(ct_subject.image[:, :, 18].T).astype(np.int16) + 1024)


def test_ct_tissues_have_expected_hu_at_truth_masks(ct_dataset: Path) -> None:
    hu, _ = _read_ct(ct_dataset, "ct002")
    brain = _truth(ct_dataset, "ct002", "brain").get_fdata() > 0
    head = _truth(ct_dataset, "ct002", "head").get_fdata() > 0
    in_plane = np.ones((3, 3, 1), bool)
    deep_brain = ndimage.binary_erosion(brain, in_plane, iterations=3)
    assert 15 < np.median(hu[deep_brain]) < 45
    far_outside = ~ndimage.binary_dilation(head, in_plane, iterations=3)
    air = hu[far_outside & (hu < 300)]
    assert -1010 < np.median(air) < -990
    skull_and_scalp = head & ~ndimage.binary_dilation(brain, in_plane, iterations=1)
    assert 700 < np.percentile(hu[skull_and_scalp], 95) < 1600
    assert hu.max() < 2000


def test_ct_grey_matter_is_denser_than_white_and_csf(ct_subject: ph.SimulatedSubject) -> None:
    fractions = dict(zip(ph.TISSUES, ct_subject.head.fractions))
    hu = {
        t: np.median(ct_subject.image[fractions[t] > 0.8])
        for t in ("grey_matter", "white_matter", "csf", "fat")
    }
    assert hu["grey_matter"] > hu["white_matter"] + 8 > hu["csf"] + 8
    assert -130 < hu["fat"] < -60


def test_headholder_lies_behind_the_head_and_erodes_before_the_skull(ct_dataset: Path) -> None:
    hu, _ = _read_ct(ct_dataset, "ct003")
    head = _truth(ct_dataset, "ct003", "head").get_fdata() > 0
    middle = hu.shape[2] // 2
    dense = hu[:, :, middle] > 300
    head_slice = head[:, :, middle]
    holder = dense & ~head_slice
    assert holder.sum() > 50, "the head holder is missing"
    rows = np.nonzero(holder)[1]
    assert rows.min() > np.nonzero(head_slice)[1].mean(), "the holder must lie posterior to the head"
    distance_to_head_mm = ndimage.distance_transform_edt(~head_slice) * CT_KNOBS["ct_pixel_mm"]
    assert distance_to_head_mm[holder].min() >= 2.0, "a cushion gap separates holder and scalp"
    eroded = ndimage.binary_erosion(dense, iterations=2)
    assert not (eroded & ~head_slice).any(), "erosion must remove the holder"
    assert (eroded & head_slice).sum() > 100, "erosion must keep the skull"


def test_mr_nifti_is_int16_not_ras_with_ixi_like_voxels(mr_dataset: Path) -> None:
    image = nib.load(mr_dataset / "IXI-T2" / "mr001-T2.nii.gz")
    assert image.get_data_dtype() == np.int16
    assert nib.aff2axcodes(image.affine) == ("P", "L", "S")
    np.testing.assert_allclose(image.header.get_zooms(), np.array([0.9375, 0.9375, 1.2]) * 3.0, rtol=1e-5)
    assert image.shape == (85, 85, 50)
    truth = _truth(mr_dataset, "mr001", "brain")
    np.testing.assert_allclose(truth.affine, image.affine)


def test_mr_has_t2_contrast(mr_dataset: Path, mr_subject: ph.SimulatedSubject) -> None:
    signal = nib.load(mr_dataset / "IXI-T2" / "mr001-T2.nii.gz").get_fdata()
    np.testing.assert_array_equal(signal, mr_subject.image)
    fractions = dict(zip(ph.TISSUES, mr_subject.head.fractions))
    dominant = np.argmax(mr_subject.head.fractions, axis=0)
    mean = {t: signal[dominant == ph.TISSUES.index(t)].mean() for t in ph.TISSUES}
    assert mean["csf"] > mean["grey_matter"] > mean["white_matter"]
    assert mean["fat"] > mean["white_matter"]
    skull = fractions["cortical_bone"] + fractions["diploe"] > 0.6
    assert signal[skull].mean() < 0.5 * mean["white_matter"]


def test_partners_are_the_same_anatomy_in_the_other_modality(ct_dataset: Path, mr_dataset: Path) -> None:
    hu, _ = _read_ct(ct_dataset, "ct003")
    t2_partner = nib.load(ct_dataset / "partners" / "ct003.nii.gz")
    assert t2_partner.get_data_dtype() == np.float32
    np.testing.assert_allclose(t2_partner.affine, _truth(ct_dataset, "ct003", "brain").affine)
    t2 = t2_partner.get_fdata()
    brain = _truth(ct_dataset, "ct003", "brain").get_fdata() > 0
    head = _truth(ct_dataset, "ct003", "head").get_fdata() > 0
    assert np.mean(t2[brain] > 300) > 0.95
    assert t2[(hu > 600) & head].mean() < 0.5 * t2[brain].mean(), "CT bone must be dark in the T2 partner"

    mr_signal = nib.load(mr_dataset / "IXI-T2" / "mr003-T2.nii.gz").get_fdata()
    hu_partner = nib.load(mr_dataset / "partners" / "mr003.nii.gz")
    np.testing.assert_allclose(hu_partner.affine, _truth(mr_dataset, "mr003", "brain").affine)
    partner_hu = hu_partner.get_fdata()
    brain = _truth(mr_dataset, "mr003", "brain").get_fdata() > 0
    head = _truth(mr_dataset, "mr003", "head").get_fdata() > 0
    assert np.mean((partner_hu[brain] > 0) & (partner_hu[brain] < 60)) > 0.95
    assert np.mean(partner_hu[~ndimage.binary_dilation(head)] < -900) > 0.99
    assert mr_signal[partner_hu > 600].mean() < 0.5 * mr_signal[brain].mean(), (
        "partner bone must be dark in the T2 subject"
    )


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    for run in ("first", "second"):
        ph.write_phantom_dataset(tmp_path / run / "ct", "CT", 1, 1, SEED, **TINY_KNOBS)
        ph.write_phantom_dataset(tmp_path / run / "mr", "MR", 1, 1, SEED, **TINY_KNOBS)
    files = sorted(p.relative_to(tmp_path / "first") for p in (tmp_path / "first").rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "second") for p in (tmp_path / "second").rglob("*") if p.is_file()
    )
    assert any(f.suffix == ".dcm" for f in files) and any(f.name.endswith("-T2.nii.gz") for f in files)
    for name in files:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_other_seed_gives_other_anatomy() -> None:
    params = ph.PhantomParams(**TINY_KNOBS)
    first = ph.simulate_subject("CT", 1, SEED, params).head.brain > 0.5
    again = ph.simulate_subject("CT", 1, SEED, params).head.brain > 0.5
    other = ph.simulate_subject("CT", 1, SEED + 1, params).head.brain > 0.5
    np.testing.assert_array_equal(first, again)
    assert 0.5 < _dice(first, other) < 0.98


def test_ct_and_mr_subjects_are_different_people() -> None:
    params = ph.PhantomParams(**TINY_KNOBS)
    model = ph.load_tissue_model(params.template_resolution_mm)
    shape, affine = ph.ct_grid(params)
    brains = []
    for modality in ("CT", "MR"):
        anatomy = ph.draw_anatomy(ph.subject_rngs(SEED, modality, 1)[0], model, params)
        brains.append(ph.render_head(model, anatomy, shape, affine, 1, params.ct_pixel_mm).brain > 0.5)
    assert _dice(*brains) < 0.98


def test_failed_run_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_subject(modality: str, index: int, seed: int, params: ph.PhantomParams) -> ph.SimulatedSubject:
        if index == 2:
            raise RuntimeError("killed")
        return real_simulate(modality, index, seed, params)

    real_simulate = ph.simulate_subject
    monkeypatch.setattr(ph, "simulate_subject", broken_subject)
    with pytest.raises(RuntimeError):
        ph.write_phantom_dataset(tmp_path / "ct_head", "CT", 2, 0, SEED, **TINY_KNOBS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "knobs"),
    [
        (("CT", 2, 3, SEED), {}),
        (("PET", 2, 0, SEED), {}),
        (("CT", 2, 0, SEED), {"no_such_knob": 1}),
        (("CT", 2, 0, SEED), {"holder_thickness_mm": 8.0}),
        (("MR", 2, 0, SEED), {"mr_axcodes": "LLS"}),
    ],
)
def test_bad_configuration_is_refused(tmp_path: Path, args: tuple, knobs: dict) -> None:
    with pytest.raises(ConfigError):
        ph.write_phantom_dataset(tmp_path / "out", *args, **knobs)
    assert not (tmp_path / "out").exists()
