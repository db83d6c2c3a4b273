"""Tests for the windowed stage, on pydicom's real CT test slices and series built here.

Geometry is checked independently of the code under test: every voxel of a loaded volume is
taken to world coordinates through its affine, converted to DICOM LPS, and located in the
original slices by solving the DICOM plane equation (position + column * spacing * row cosines
+ row * spacing * column cosines + slice step).
"""

from __future__ import annotations

import gzip
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess.window import (
    WINDOW_PRESETS,
    load_ct_hu,
    load_mri,
    main,
    normalise_mri,
    resample_isotropic,
    standardise_mri,
    standardise_partner,
    hu_range_to_unit,
    window_ct,
    window_hu,
)

IDENTITY_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SECRET_NAME = "SECRETNAME^PATIENT"
SECRET_ID = "SECRETID12345"


# --------------------------------------------------------------------------- helpers


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom-data does not provide {name}")
    return Path(path)


def copy_into_subject(tmp_path: Path, name: str, file_name: str = "IM0001") -> Path:
    """A patient folder holding one pydicom test file (renamed) in a subfolder, plus a non-DICOM file."""
    subject = tmp_path / "patient"
    (subject / "series_a").mkdir(parents=True)
    shutil.copy(pydicom_file(name), subject / "series_a" / file_name)
    (subject / "notes.txt").write_text("not DICOM\n")
    return subject


def ct_slice(
    stored: np.ndarray,
    position,
    *,
    series_uid: str,
    orientation=IDENTITY_IOP,
    spacing=(0.5, 0.5),
    thickness: float | None = 5.0,
    modality: str = "CT",
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    bits_stored: int = 16,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    kernel: str = "STANDARD",
    description: str = "PLAIN",
    window: tuple[float, float] | None = None,
) -> Dataset:
    """One CT image as a scanner would write it, with identifying fields set so tests can prove
    they never reach an output."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.StudyDate = "20200101"
    ds.InstitutionName = "Secret Hospital"
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.ConvolutionKernel = kernel
    ds.SeriesDescription = description
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
    if thickness is not None:
        ds.SliceThickness = f"{thickness:.6f}"
    if slope is not None:
        ds.RescaleSlope = f"{slope:g}"
    if intercept is not None:
        ds.RescaleIntercept = f"{intercept:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    ds.set_pixel_data(stored, "MONOCHROME2", bits_stored)
    return ds


def write_series(
    folder: Path,
    stored: np.ndarray,
    first_position,
    slice_step,
    rng: np.random.Generator,
    skip: tuple[int, ...] = (),
    **slice_kwargs,
) -> str:
    """Write a (slices, rows, columns) volume as one DICOM series under random, shuffled names."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = slice_kwargs.pop("series_uid", None) or generate_uid()
    names = [f"{int(v):08x}" for v in rng.integers(0, 16**8, size=len(stored))]
    assert len(set(names)) == len(names) and (len(names) < 3 or sorted(names) != names), (
        "names must not follow positions"
    )
    for k in range(len(stored)):
        if k in skip:
            continue
        position = np.asarray(first_position, float) + k * np.asarray(slice_step, float)
        ct_slice(stored[k], position, series_uid=uid, **slice_kwargs).save_as(
            folder / names[k], enforce_file_format=True
        )
    return uid


def dicom_indices(image: nib.Nifti1Image, first_position, orientation, spacing, slice_step) -> np.ndarray:
    """For every voxel of ``image``, the (slice, row, column) it came from in the DICOM series."""
    ijk = np.indices(image.shape).reshape(3, -1)
    ras = image.affine[:3, :3] @ ijk + image.affine[:3, 3:4]
    lps = ras * np.array([[-1.0], [-1.0], [1.0]])
    row_cos, col_cos = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    plane = np.column_stack([row_cos * spacing[1], col_cos * spacing[0], slice_step])
    column_row_slice = np.linalg.solve(plane, lps - np.asarray(first_position, float)[:, None])
    rounded = np.round(column_row_slice)
    assert np.abs(column_row_slice - rounded).max() < 1e-3, "voxel centres must fall on DICOM pixel centres"
    column, row, slice_ = rounded.astype(int)
    return np.stack([slice_, row, column])


def expected_from_slices(image, hu_slices, first_position, orientation, spacing, slice_step) -> np.ndarray:
    k, r, c = dicom_indices(image, first_position, orientation, spacing, slice_step)
    assert k.min() == 0 and k.max() == len(hu_slices) - 1
    return np.asarray(hu_slices)[k, r, c].reshape(image.shape)


def assert_canonical(image: nib.Nifti1Image) -> None:
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert image.get_data_dtype() == np.float32


def ras_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return path


# --------------------------------------------------------------------------- HU on real slices


@pytest.mark.parametrize(
    "name",
    [
        "693_UNCR.dcm",  # head CT, uncompressed, signed, intercept -1024
        "693_J2KR.dcm",  # the same slice, JPEG 2000 lossless
        "J2K_pixelrep_mismatch.dcm",  # head CT, JPEG 2000, gantry tilt of ~22 degrees
        "CT_small.dcm",
        "bad_sequence.dcm",  # JPEG lossless (process 14), 12-bit unsigned
    ],
)
def test_hu_equal_pydicom_modality_lut_on_real_slices(tmp_path, name):
    ds = pydicom.dcmread(pydicom_file(name))
    image = load_ct_hu(copy_into_subject(tmp_path, name))
    assert_canonical(image)
    iop = [float(v) for v in ds.ImageOrientationPatient]
    spacing = [float(v) for v in ds.PixelSpacing]
    normal = np.cross(iop[:3], iop[3:])
    expected = expected_from_slices(
        image,
        [apply_modality_lut(ds.pixel_array, ds)],
        [float(v) for v in ds.ImagePositionPatient],
        iop,
        spacing,
        normal * float(ds.SliceThickness),
    )
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected.astype(np.float32))
    assert sorted(nib.affines.voxel_sizes(image.affine).round(4)) == sorted(
        [*np.round(spacing, 4), round(float(ds.SliceThickness), 4)]
    )


def test_enhanced_multiframe_ct_uses_per_frame_positions_and_shared_rescale(tmp_path):
    ds = pydicom.dcmread(pydicom_file("eCT_Supplemental.dcm"))
    shared = ds.SharedFunctionalGroupsSequence[0]
    rescale = Dataset()
    rescale.RescaleSlope = shared.PixelValueTransformationSequence[0].RescaleSlope
    rescale.RescaleIntercept = shared.PixelValueTransformationSequence[0].RescaleIntercept
    positions = [
        [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        for item in ds.PerFrameFunctionalGroupsSequence
    ]
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    image = load_ct_hu(copy_into_subject(tmp_path, "eCT_Supplemental.dcm"))
    assert_canonical(image)
    assert image.shape == (512, 512, 2)
    # The file lists the upper frame first: the volume must follow positions, not frame order.
    assert positions[0][2] < positions[1][2]
    expected = expected_from_slices(
        image,
        [apply_modality_lut(frame, rescale) for frame in ds.pixel_array],
        positions[0],
        iop,
        spacing,
        np.subtract(positions[1], positions[0]),
    )
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected.astype(np.float32))
    assert image.affine[2, 3] == pytest.approx(min(p[2] for p in positions))


def test_jpeg_ls_ct_decodes_through_pylibjpeg(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small_jpeg_ls_lossless.dcm"))
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    ds.Modality = "CT"
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    subject = tmp_path / "patient"
    subject.mkdir()
    ds.save_as(subject / "scan.dcm")
    written = pydicom.dcmread(subject / "scan.dcm")
    assert written.file_meta.TransferSyntaxUID == JPEGLSLossless  # still compressed on disk
    image = load_ct_hu(subject)
    iop = [float(v) for v in ds.ImageOrientationPatient]
    expected = expected_from_slices(
        image,
        [apply_modality_lut(written.pixel_array, written)],
        [float(v) for v in ds.ImagePositionPatient],
        iop,
        [float(v) for v in ds.PixelSpacing],
        np.cross(iop[:3], iop[3:]) * float(ds.SliceThickness),
    )
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected.astype(np.float32))


def test_modality_lut_sequence_is_applied(tmp_path):
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 60
    ds = ct_slice(stored, (0, 0, 0), series_uid=generate_uid(), slope=None, intercept=None, bits_stored=12)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.ModalityLUTType = "HU"
    item.add_new("LUTData", "US", [2 * v + 7 for v in range(4096)])
    ds.ModalityLUTSequence = DicomSequence([item])
    (tmp_path / "p").mkdir()
    ds.save_as(tmp_path / "p" / "a", enforce_file_format=True)
    image = load_ct_hu(tmp_path / "p")
    written = pydicom.dcmread(tmp_path / "p" / "a")
    expected = apply_modality_lut(written.pixel_array, written)
    np.testing.assert_array_equal(np.sort(np.asarray(image.dataobj).ravel()), np.sort(expected.ravel()))
    assert float(np.asarray(image.dataobj).max()) == 2 * float(stored.max()) + 7


@pytest.mark.parametrize("intercept", [0.0, -50.0])
def test_rsna_12bit_wrap_is_undone(tmp_path, intercept):
    rng = np.random.default_rng(7)
    true_hu = rng.integers(-1000, 2001, size=(16, 16))
    true_hu[0, :5] = [-1000, -999, -1, 0, 2000]
    stored = np.mod(true_hu - intercept, 4096).astype(np.uint16)  # 12-bit two's complement
    assert stored.max() >= 3096  # air is stored bright: the quirk is present
    subject = tmp_path / "p"
    subject.mkdir()
    ds = ct_slice(stored, (0, 0, 0), series_uid=generate_uid(), bits_stored=12, intercept=intercept)
    assert ds.PixelRepresentation == 0
    ds.save_as(subject / "x.dcm", enforce_file_format=True)
    image = load_ct_hu(subject)
    expected = expected_from_slices(image, [true_hu], (0, 0, 0), IDENTITY_IOP, (0.5, 0.5), (0, 0, 5))
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected.astype(np.float32))


def test_rsna_rule_leaves_ordinary_12bit_slices_alone(tmp_path):
    stored = np.array([[0, 24, 1064, 3095], [3096, 4000, 4095, 1024]], dtype=np.uint16)
    subject = tmp_path / "p"
    subject.mkdir()
    ct_slice(stored, (0, 0, 0), series_uid=generate_uid(), bits_stored=12, intercept=-1024).save_as(
        subject / "x.dcm", enforce_file_format=True
    )
    hu = np.asarray(load_ct_hu(subject).dataobj)
    np.testing.assert_array_equal(np.sort(hu.ravel()), np.sort(stored.ravel().astype(np.float32) - 1024))


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    "center,width", [(40, 80), (80, 200), (600, 2800), (40, 100), (-600, 1500), (35.5, 2)]
)
def test_window_equals_pydicom_apply_voi_lut(center, width):
    ds = pydicom.dcmread(pydicom_file("693_UNCR.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    ds.WindowCenter, ds.WindowWidth = center, width
    voi = apply_voi_lut(hu, ds)
    y_min, y_max = apply_voi_lut(np.array([-1e9, 1e9]), ds)  # pydicom's output range
    ours = window_hu(hu, center, width)
    assert ours.dtype == np.float32 and ours.min() >= 0 and ours.max() <= 1
    np.testing.assert_allclose(ours, (voi - y_min) / (y_max - y_min), atol=1e-6)
    assert 0 < np.mean((ours > 0) & (ours < 1))  # the window really cuts through this slice


def test_window_rejects_degenerate_width():
    with pytest.raises(ConfigError, match="width"):
        window_hu(np.zeros(3), 40, 1)


def test_presets_and_the_file_window(tmp_path):
    subject = copy_into_subject(tmp_path, "693_UNCR.dcm")
    hu = load_ct_hu(subject)
    out = {}
    for preset in [*WINDOW_PRESETS, "file"]:
        window_ct(subject, tmp_path / f"{preset}.nii.gz", preset=preset, voxel_mm=4.0, anti_alias=False)
        out[preset] = np.asarray(nib.load(tmp_path / f"{preset}.nii.gz").dataobj)
    isotropic = np.asarray(resample_isotropic(hu, 4.0, anti_alias=False).dataobj)
    for preset, (center, width) in {**WINDOW_PRESETS, "file": (40.0, 100.0)}.items():  # 693: WC 40 / WW 100
        np.testing.assert_array_equal(out[preset], window_hu(isotropic, center, width))
    assert not np.array_equal(out["brain"], out["file"])


def test_file_window_missing_is_an_error(tmp_path):
    subject = copy_into_subject(tmp_path, "CT_small.dcm")  # has no WindowCenter
    with pytest.raises(InputDataError, match="WindowCenter"):
        window_ct(subject, tmp_path / "o.nii.gz", preset="file")
    assert not (tmp_path / "o.nii.gz").exists()


# --------------------------------------------------------------------------- series assembly


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)


def random_stored(rng, shape=(6, 10, 12)) -> np.ndarray:
    return rng.integers(0, 2500, size=shape).astype(np.int16)


@pytest.mark.parametrize(
    "orientation,slice_step",
    [
        (IDENTITY_IOP, (0, 0, 5.0)),
        ((-1, 0, 0, 0, -1, 0), (0, 0, -5.0)),  # flipped rows and columns, slices stacked downwards
        ((np.cos(0.35), np.sin(0.35), 0, -np.sin(0.35), np.cos(0.35), 0), (0, 0, 5.0)),  # oblique
        ((1, 0, 0, 0, np.cos(0.3), -np.sin(0.3)), (0, 0, 5.0)),  # gantry tilt: sheared stack
    ],
)
def test_series_sorted_by_position_with_every_voxel_in_place(tmp_path, rng, orientation, slice_step):
    stored = random_stored(rng)
    first = (-30.0, 20.0, 100.0)
    write_series(
        tmp_path / "p" / "s", stored, first, slice_step, rng, orientation=orientation, spacing=(0.7, 0.6)
    )
    image = load_ct_hu(tmp_path / "p")
    assert_canonical(image)
    expected = expected_from_slices(
        image, stored.astype(np.float32) - 1024, first, orientation, (0.7, 0.6), slice_step
    )
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected)


@pytest.mark.parametrize(
    "orientation,slice_step", [(IDENTITY_IOP, (0, 0, 4.0)), ((-1, 0, 0, 0, -1, 0), (0, 0, -4.0))]
)
def test_asymmetric_marker_lands_left_anterior_superior(tmp_path, rng, orientation, slice_step):
    """A bright voxel at the patient's left, anterior, superior corner must end at low i (RAS:
    left is -x), high j and high k, whatever the DICOM stacking."""
    n_slices, rows, columns = 5, 8, 10
    first = np.array([10.0, -20.0, 50.0])
    row_cos, col_cos = np.array(orientation[:3], float), np.array(orientation[3:], float)
    stored = np.zeros((n_slices, rows, columns), np.int16)
    # Find the (k, r, c) whose LPS position is most left (+x), anterior (-y) and superior (+z).
    k, r, c = np.indices(stored.shape)
    lps = first + k[..., None] * np.asarray(slice_step) + c[..., None] * row_cos + r[..., None] * col_cos
    score = lps[..., 0] - lps[..., 1] + lps[..., 2]
    marker = np.unravel_index(np.argmax(score), stored.shape)
    stored[marker] = 3000
    write_series(tmp_path / "p", stored, first, slice_step, rng, orientation=orientation, spacing=(1.0, 1.0))
    image = load_ct_hu(tmp_path / "p")
    data = np.asarray(image.dataobj)
    i, j, kk = np.unravel_index(np.argmax(data), data.shape)
    assert (i, j, kk) == (0, data.shape[1] - 1, data.shape[2] - 1)
    ras = image.affine @ [i, j, kk, 1]
    np.testing.assert_allclose(ras[:3], lps[marker] * [-1, -1, 1], atol=1e-4)


def test_missing_slice_raises_naming_the_series(tmp_path, rng):
    folder = tmp_path / "p" / "CT_5mm"
    write_series(folder, random_stored(rng), (0, 0, 0), (0, 0, 5.0), rng, skip=(3,))
    with pytest.raises(InputDataError, match="missing slice") as caught:
        load_ct_hu(tmp_path / "p")
    assert caught.value.path == folder


def test_duplicate_slice_raises_naming_the_series(tmp_path, rng):
    folder = tmp_path / "p" / "CT_5mm"
    stored = random_stored(rng)
    uid = write_series(folder, stored, (0, 0, 0), (0, 0, 5.0), rng)
    ct_slice(stored[2], (0, 0, 10.0), series_uid=uid).save_as(folder / "copy", enforce_file_format=True)
    with pytest.raises(InputDataError, match="duplicate slice") as caught:
        load_ct_hu(tmp_path / "p")
    assert caught.value.path == folder


def test_irregular_spacing_raises(tmp_path, rng):
    folder = tmp_path / "p"
    uid = write_series(folder, random_stored(rng, (4, 6, 6)), (0, 0, 0), (0, 0, 5.0), rng)
    ct_slice(random_stored(rng, (1, 6, 6))[0], (0, 0, 17.5), series_uid=uid).save_as(
        folder / "odd", enforce_file_format=True
    )
    with pytest.raises(InputDataError, match="irregular slice spacing"):
        load_ct_hu(folder)


def test_series_choice_follows_the_documented_rule(tmp_path, rng):
    subject = tmp_path / "patient"
    shape = (8, 6)

    def series(name, n, value, thickness=5.0, **kwargs):
        stored = np.full((n, *shape), value, np.int16)
        step = kwargs.pop("step", (0, 0, thickness))
        write_series(subject / name, stored, (0, 0, 0), step, rng, thickness=thickness, **kwargs)

    series("bone", 12, 1, kernel="BONE")
    series("lung", 12, 2, description="LUNG 5mm")
    series("thin", 12, 3, thickness=1.25)
    series("plain_few", 4, 4)
    series("plain_more", 6, 5)  # wins: original, 5 mm, most slices among equals
    series("derived", 12, 6, image_type=("DERIVED", "SECONDARY", "AXIAL"))
    series("coronal", 12, 7, orientation=(1, 0, 0, 0, 0, -1), step=(0, 5.0, 0))
    series("scout", 1, 8, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    series("mr", 12, 9, modality="MR")
    (subject / "DICOMDIR").write_bytes(b"\0" * 10)

    def chosen_value(**kwargs):
        image = load_ct_hu(subject, **kwargs)
        values = np.unique(np.asarray(image.dataobj))
        assert values.size == 1
        return int(values[0]) + 1024, image.shape[2]

    assert chosen_value() == (5, 6)
    assert chosen_value(preferred_thickness_mm=1.0) == (3, 12)
    assert chosen_value(sharp_kernel_words=("LUNG",)) == (1, 12)  # bone allowed, thickness tie, most slices


def test_no_usable_series_lists_each_rejection(tmp_path):
    subject = copy_into_subject(tmp_path, "MR_small.dcm", "scan.dcm")
    with pytest.raises(InputDataError, match=r"scan\.dcm.*Modality MR, not CT") as caught:
        load_ct_hu(subject)
    assert caught.value.path == subject


@pytest.mark.parametrize("make", ["empty", "text_only"])
def test_folder_without_dicom_raises(tmp_path, make):
    subject = tmp_path / "p"
    subject.mkdir()
    if make == "text_only":
        (subject / "readme.txt").write_text("hello")
    with pytest.raises(InputDataError, match="no DICOM image files"):
        load_ct_hu(subject)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(InputDataError, match="not a folder"):
        load_ct_hu(tmp_path / "absent")


def test_truncated_pixel_data_raises_naming_the_file(tmp_path):
    subject = copy_into_subject(tmp_path, "693_UNCR.dcm", "slice.dcm")
    target = subject / "series_a" / "slice.dcm"
    target.write_bytes(target.read_bytes()[:300_000])
    with pytest.raises(InputDataError, match="pixel data cannot be decoded") as caught:
        load_ct_hu(subject)
    assert caught.value.path == target


def test_file_cut_before_pixel_data_raises(tmp_path):
    subject = copy_into_subject(tmp_path, "693_UNCR.dcm", "slice")
    target = subject / "series_a" / "slice"
    raw = target.read_bytes()
    target.write_bytes(raw[: raw.index(b"\xe0\x7f\x10\x00")])  # up to the Pixel Data tag
    with pytest.raises(InputDataError, match="no pixel data") as caught:
        load_ct_hu(subject)
    assert caught.value.path == target


def test_dcm_file_that_is_not_dicom_raises(tmp_path):
    subject = copy_into_subject(tmp_path, "693_UNCR.dcm")
    (subject / "broken.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(InputDataError, match="preamble") as caught:
        load_ct_hu(subject)
    assert caught.value.path == subject / "broken.dcm"


def test_missing_rescale_raises_naming_the_file(tmp_path):
    subject = tmp_path / "p"
    subject.mkdir()
    ct_slice(
        np.zeros((4, 4), np.int16), (0, 0, 0), series_uid=generate_uid(), slope=None, intercept=None
    ).save_as(subject / "x", enforce_file_format=True)
    with pytest.raises(InputDataError, match="RescaleSlope") as caught:
        load_ct_hu(subject)
    assert caught.value.path == subject / "x"


def test_nothing_identifying_reaches_outputs_or_logs(tmp_path, rng, caplog):
    write_series(tmp_path / "p", random_stored(rng), (0, 0, 0), (0, 0, 5.0), rng)
    out = tmp_path / "out.nii.gz"
    with caplog.at_level(logging.DEBUG):
        window_ct(tmp_path / "p", out)
    raw = gzip.decompress(out.read_bytes())
    for secret in (SECRET_NAME, SECRET_ID, "Secret Hospital", "20200101", "1.2.3.4"):
        assert secret.encode() not in raw
        assert secret not in caplog.text
    assert nib.load(out).header["descrip"].item() == b""


# --------------------------------------------------------------------------- stages, resampling


def test_window_ct_output_contract_and_determinism(tmp_path, rng):
    stored = rng.integers(900, 1150, size=(10, 40, 40)).astype(np.int16)
    write_series(tmp_path / "p", stored, (-10, -10, 0), (0, 0, 3.0), rng, spacing=(0.5, 0.5))
    first, second = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    window_ct(tmp_path / "p", first, center=40, width=80, voxel_mm=2.0)
    window_ct(tmp_path / "p", second, center=40, width=80, voxel_mm=2.0)
    assert first.read_bytes() == second.read_bytes()
    image = nib.load(first)
    data = np.asarray(image.dataobj)
    assert_canonical(image)
    np.testing.assert_allclose(nib.affines.voxel_sizes(image.affine), 2.0)
    assert np.allclose(image.affine[:3, :3], np.diag([2.0, 2.0, 2.0]))
    assert data.min() >= 0 and data.max() <= 1 and 0 < data.mean() < 1
    field_of_view = np.array([19.5, 19.5, 27.0])  # between the first and last voxel centres
    assert np.all((np.array(image.shape) - 1) * 2.0 >= field_of_view)
    assert np.all((np.array(image.shape) - 2) * 2.0 < field_of_view)
    assert not list(tmp_path.glob(".*tmp*"))


def test_resampling_keeps_world_position(tmp_path):
    zooms = np.array([0.5, 0.8, 5.0])
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-20, -30, -40]
    ijk = np.indices((80, 60, 16)).reshape(3, -1).T
    world = ijk * zooms + affine[:3, 3]
    centre = np.array([-3.0, -9.0, -2.0])
    blob = np.exp(-np.sum((world - centre) ** 2, axis=1) / (2 * 4.0**2)).reshape(80, 60, 16)
    out = resample_isotropic(nib.Nifti1Image(blob.astype(np.float32), affine), voxel_mm=2.0)
    data = np.asarray(out.dataobj)
    grid = np.indices(data.shape).reshape(3, -1)
    out_world = (out.affine[:3, :3] @ grid + out.affine[:3, 3:4]).T
    weights = data.ravel() / data.sum()
    np.testing.assert_allclose(weights @ out_world, centre, atol=0.3)
    np.testing.assert_allclose(nib.affines.voxel_sizes(out.affine), 2.0)


def make_mri_volume(rng, shape=(30, 34, 28)) -> np.ndarray:
    """A head-like volume: noisy air around an ellipsoid of tissue with a brighter core."""
    x, y, z = (np.indices(shape) - np.array(shape)[:, None, None, None] / 2) / (
        np.array(shape)[:, None, None, None] / 2
    )
    radius = np.sqrt(x**2 + y**2 + z**2)
    data = np.where(radius < 0.8, 300.0, 0.0) + np.where(radius < 0.4, 500.0, 0.0)
    return (data + rng.normal(0, 10, shape)).clip(0)


def test_mri_in_las_and_pir_comes_back_canonical(tmp_path, rng):
    ras = rng.normal(size=(6, 7, 8)).astype(np.float32)
    affine_ras = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, 20], [0, 0, 4.0, 5], [0, 0, 0, 1]])
    n0, n1, n2 = ras.shape
    # LAS: i runs right-to-left.  (x, y, z) = (n0 - 1 - i, j, k)
    las_to_ras = np.array([[-1.0, 0, 0, n0 - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    # PIR: i runs to posterior, j to inferior, k to the right: (x, y, z) = (k, n1 - 1 - i, n2 - 1 - j)
    pir_to_ras = np.array([[0.0, 0, 1, 0], [-1, 0, 0, n1 - 1], [0, -1, 0, n2 - 1], [0, 0, 0, 1]])
    cases = {
        "las": (ras[::-1], affine_ras @ las_to_ras),
        "pir": (ras.transpose(1, 2, 0)[::-1, ::-1, :], affine_ras @ pir_to_ras),
    }
    for name, (data, affine) in cases.items():
        path = ras_nifti(data, affine, tmp_path / f"{name}.nii.gz")
        assert nib.aff2axcodes(nib.load(path).affine) == tuple(name.upper())
        image = load_mri(path)
        assert_canonical(image)
        np.testing.assert_array_equal(np.asarray(image.dataobj), ras)
        np.testing.assert_allclose(image.affine, affine_ras)


def test_mri_trailing_singleton_dimension_is_dropped(tmp_path, rng):
    data = rng.normal(size=(5, 6, 7, 1))
    image = load_mri(ras_nifti(data, np.eye(4), tmp_path / "a.nii.gz"))
    np.testing.assert_allclose(np.asarray(image.dataobj), data[..., 0].astype(np.float32))


@pytest.mark.parametrize("shape", [(5, 6, 7, 2), (5, 6)])
def test_mri_of_wrong_dimensions_raises(tmp_path, shape):
    path = ras_nifti(np.zeros(shape), np.eye(4), tmp_path / "bad.nii.gz")
    with pytest.raises(InputDataError, match="3-D") as caught:
        load_mri(path)
    assert caught.value.path == path


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_mri_with_nan_or_inf_raises_naming_the_file(tmp_path, bad_value):
    data = np.ones((4, 4, 4))
    data[1, 2, 3] = bad_value
    path = ras_nifti(data, np.eye(4), tmp_path / "nan.nii.gz")
    with pytest.raises(InputDataError, match="1 voxels are NaN or infinite") as caught:
        load_mri(path)
    assert caught.value.path == path


def test_unreadable_nifti_raises(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(b"not a nifti")
    with pytest.raises(InputDataError, match="not a readable NIfTI"):
        load_mri(path)


def test_normalise_mri_scales_foreground_percentiles(rng):
    data = make_mri_volume(rng)
    data[3, 3, 3] = 1e6  # a hot voxel must not compress the tissue range
    out = normalise_mri(data, (0.5, 99.5))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert out[3, 3, 3] == 1.0
    core = out[15, 17, 14]
    assert core > 0.9  # the bright core reaches the top of the range despite the hot voxel
    foreground = data > 150
    assert np.median(out[~foreground]) == 0.0
    np.testing.assert_allclose(np.mean(out[foreground] >= 1.0), 0.005, atol=0.003)


def test_normalise_mri_rejects_constant_volume_and_bad_percentiles():
    with pytest.raises(ValueError, match="constant"):
        normalise_mri(np.ones((4, 4, 4)))
    with pytest.raises(ConfigError, match="percentiles"):
        normalise_mri(np.arange(64.0).reshape(4, 4, 4), (60, 40))


def test_standardise_mri_is_deterministic_and_in_range(tmp_path, rng):
    source = ras_nifti(make_mri_volume(rng), np.diag([1.2, 1.2, 1.5, 1.0]), tmp_path / "t2.nii.gz")
    standardise_mri(source, tmp_path / "a.nii.gz", voxel_mm=2.0)
    standardise_mri(source, tmp_path / "b.nii.gz", voxel_mm=2.0)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    image = nib.load(tmp_path / "a.nii.gz")
    data = np.asarray(image.dataobj)
    assert_canonical(image)
    np.testing.assert_allclose(nib.affines.voxel_sizes(image.affine), 2.0)
    assert data.min() == 0.0 and data.max() == 1.0


def test_standardise_mri_failure_leaves_no_file(tmp_path):
    source = ras_nifti(np.ones((6, 6, 6)), np.eye(4), tmp_path / "flat.nii.gz")
    with pytest.raises(InputDataError, match="constant") as caught:
        standardise_mri(source, tmp_path / "out.nii.gz")
    assert caught.value.path == source
    assert list(tmp_path.iterdir()) == [source]


def sphere_world(affine: np.ndarray, shape, centre, radius, inside, outside) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4]).T
    distance = np.linalg.norm(world - centre, axis=1)
    return np.where(distance < radius, inside, outside).reshape(shape), distance.reshape(shape)


@pytest.mark.parametrize("partner_modality", ["CT", "MR"])
def test_partner_lands_on_the_subject_grid_in_world_coordinates(tmp_path, rng, partner_modality):
    centre, radius = np.array([12.0, -8.0, 6.0]), 14.0
    subject_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    subject_affine[:3, 3] = [-30, -30, -30]
    subject_data, _ = sphere_world(subject_affine, (40, 40, 40), centre, radius, 400.0, 0.0)
    subject = ras_nifti(
        subject_data + rng.normal(0, 5, subject_data.shape), subject_affine, tmp_path / "s.nii.gz"
    )
    grid = standardise_mri(subject, tmp_path / "s_win.nii.gz", voxel_mm=2.0)

    # The partner: same anatomy, other modality, written LPS with 1 mm voxels and another origin.
    partner_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    partner_affine[:3, 3] = [31, 31, -31]
    inside, outside = (40.0, -1000.0) if partner_modality == "CT" else (250.0, 0.0)
    partner_data, _ = sphere_world(partner_affine, (62, 62, 62), centre, radius, inside, outside)
    partner = ras_nifti(partner_data, partner_affine, tmp_path / "partner.nii.gz")
    out = standardise_partner(
        partner, partner_modality, grid, tmp_path / "s.partner.nii.gz", center=40, width=80
    )

    grid_image, out_image = nib.load(grid), nib.load(out)
    assert out_image.shape == grid_image.shape
    np.testing.assert_allclose(out_image.affine, grid_image.affine)
    data = np.asarray(out_image.dataobj)
    _, distance = sphere_world(out_image.affine, out_image.shape, centre, radius, 1, 0)
    # 40 HU in the 40/80 window: DICOM's LINEAR function, ((40 - 39.5) / 79 + 0.5).
    expected_inside = (0.5 / 79 + 0.5) if partner_modality == "CT" else 1.0
    np.testing.assert_allclose(data[distance < radius - 3], expected_inside, atol=1e-5)
    np.testing.assert_allclose(data[distance > radius + 3], 0.0, atol=1e-6)


def test_ct_partner_over_a_full_hu_range(tmp_path):
    """With hu_range the CT partner keeps bone and air: [-1024, 3000] -> [0, 1] linearly, no window."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = ras_nifti(np.zeros((8, 8, 8)), affine, tmp_path / "grid.nii.gz")
    hu = np.full((8, 8, 8), -1000.0)
    hu[2:6, 2:6, 2:6], hu[3:5, 3:5, 3:5] = 1400.0, 40.0
    partner = ras_nifti(hu, affine, tmp_path / "partner.nii.gz")
    out = standardise_partner(partner, "CT", grid, tmp_path / "out.nii.gz", hu_range=(-1024.0, 3000.0),
                              anti_alias=False)
    data = np.asarray(nib.load(out).dataobj)
    np.testing.assert_allclose(-1024.0 + data * 4024.0, hu, atol=1e-2)  # same grid: values kept
    np.testing.assert_allclose(hu_range_to_unit(np.array([-2000.0, 988.0, 5000.0]), (-1024.0, 3000.0)),
                               [0.0, 0.5, 1.0])
    with pytest.raises(ConfigError, match="low < high"):
        standardise_partner(partner, "CT", grid, tmp_path / "bad.nii.gz", hu_range=(100.0, -100.0))


def test_partner_modality_must_be_known(tmp_path):
    with pytest.raises(ConfigError, match="modality"):
        standardise_partner(tmp_path / "a", "PET", tmp_path / "b", tmp_path / "c")


# --------------------------------------------------------------------------- CLI


def test_cli_runs_each_command(tmp_path, rng):
    write_series(
        tmp_path / "p", random_stored(rng, (4, 12, 12)), (0, 0, 0), (0, 0, 5.0), rng, spacing=(1.0, 1.0)
    )
    main(
        [
            "ct",
            "--input",
            str(tmp_path / "p"),
            "--output",
            str(tmp_path / "ct.nii.gz"),
            "--preset",
            "subdural",
            "--voxel-mm",
            "3",
            "--no-anti-alias",
        ]
    )
    assert np.allclose(nib.affines.voxel_sizes(nib.load(tmp_path / "ct.nii.gz").affine), 3.0)
    source = ras_nifti(make_mri_volume(rng), np.eye(4), tmp_path / "t2.nii.gz")
    main(["mri", "--input", str(source), "--output", str(tmp_path / "mr.nii.gz"), "--percentiles", "1", "99"])
    main(
        [
            "partner",
            "--input",
            str(source),
            "--modality",
            "MR",
            "--grid",
            str(tmp_path / "mr.nii.gz"),
            "--output",
            str(tmp_path / "mr.partner.nii.gz"),
            "--percentiles",
            "1",
            "99",
        ]
    )
    np.testing.assert_allclose(
        np.asarray(nib.load(tmp_path / "mr.partner.nii.gz").dataobj),
        np.asarray(nib.load(tmp_path / "mr.nii.gz").dataobj),
        atol=1e-6,
    )


def test_cli_reports_bad_input_and_exits_1(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as caught:
        main(["ct", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o.nii.gz")])
    assert caught.value.code == 1
    assert "no DICOM image files" in capsys.readouterr().err


def test_module_entry_point(tmp_path, repo_root):
    source = ras_nifti(make_mri_volume(np.random.default_rng(1)), np.eye(4), tmp_path / "t2.nii.gz")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.preprocess.window",
            "mri",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "o.nii.gz"),
            "--voxel-mm",
            "2",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    written = nib.load(tmp_path / "o.nii.gz")
    np.testing.assert_allclose(nib.affines.voxel_sizes(written.affine), 2.0)
    assert np.all((np.array(written.shape) - 1) * 2 >= np.array([29, 33, 27]))
