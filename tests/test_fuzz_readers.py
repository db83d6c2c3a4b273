"""Fuzzing the readers: valid small DICOM series and NIfTI volumes, mutated (bytes flipped, files
cut short, header fields set to odd values), may only ever raise the project's own errors.

Hypothesis runs derandomised (a fixed seed derived from each test) with a bounded number of
examples, so CI sees the same inputs every time and the file stays well under 30 s.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_support import write_ct_series, write_nifti
from pipeline.errors import PipelineError
from pipeline.preprocess.window import load_ct_hu, load_mri

FUZZ = settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

odd_numbers = st.one_of(
    st.integers(-(2**31), 2**31),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**16, 2**32]),
)
odd_text = st.one_of(
    st.text(max_size=24),
    st.sampled_from(["", "\\", "1\\2\\3\\4\\5\\6\\7", "nan", "inf", "-0", "1e309", "\x00", "MR", "CT"]),
)
# Header fields the series reader depends on; each is set to an odd value (or deleted).
DICOM_FIELDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "Modality", "PhotometricInterpretation", "SeriesInstanceUID",
    "ImageType", "WindowCenter", "WindowWidth", "PixelData",
)  # fmt: skip
NIFTI_FIELDS = (
    "dim", "pixdim", "datatype", "bitpix", "vox_offset", "scl_slope", "scl_inter", "dim_info", "sizeof_hdr",
    "srow_x", "srow_y", "srow_z", "qform_code", "sform_code", "quatern_b", "quatern_c", "qoffset_x",
)  # fmt: skip


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fuzz_seeds")
    return {
        "series": write_ct_series(folder / "series", n_slices=3, size=6)[0].parent,
        "nii": write_nifti(folder / "t2.nii", np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)),
        "nii.gz": write_nifti(folder / "t2.nii.gz", np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)),
    }


def _only_project_errors(read, path: Path) -> None:
    try:
        read(path)
    except PipelineError as error:  # anything else escapes and fails the test
        assert str(path) in str(error), f"the message must name the file: {error}"


def _mutated_bytes(data: bytes, flips: list[tuple[int, int]], cut: float | None) -> bytes:
    mutable = bytearray(data)
    for position, value in flips:
        mutable[position % len(mutable)] = value
    if cut is not None:
        mutable = mutable[: int(cut * len(mutable))]
    return bytes(mutable)


flips = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=8)
cuts = st.one_of(st.none(), st.floats(0.0, 1.0))


@FUZZ
@given(which=st.integers(0, 2), flips=flips, cut=cuts)
def test_series_reader_with_corrupted_bytes(seeds, which, flips, cut):
    with tempfile.TemporaryDirectory() as work:
        series = Path(work) / "patient"
        shutil.copytree(seeds["series"], series)
        victim = sorted(series.iterdir())[which]
        victim.write_bytes(_mutated_bytes(victim.read_bytes(), flips, cut))
        _only_project_errors(load_ct_hu, series)


@FUZZ
@given(
    which=st.integers(0, 2),
    field=st.sampled_from(DICOM_FIELDS),
    value=st.one_of(st.none(), odd_numbers, odd_text),
)
def test_series_reader_with_odd_header_fields(seeds, which, field, value):
    with tempfile.TemporaryDirectory() as work:
        series = Path(work) / "patient"
        shutil.copytree(seeds["series"], series)
        victim = sorted(series.iterdir())[which]
        ds = pydicom.dcmread(victim)
        try:
            if value is None:
                ds.pop(field, None)
            else:
                vr = dictionary_VR(field)
                ds.add_new(field, vr, str(value).encode() if vr in ("OB", "OW") else value)
            ds.save_as(victim, enforce_file_format=False)
        except Exception:  # pydicom refuses to write this value at all: nothing to read
            return
        _only_project_errors(load_ct_hu, series)


@FUZZ
@given(kind=st.sampled_from(["nii", "nii.gz"]), flips=flips, cut=cuts)
def test_nifti_reader_with_corrupted_bytes(seeds, kind, flips, cut):
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / f"t2.{kind}"
        data = seeds[kind].read_bytes()
        if kind == "nii.gz":  # mutate what the reader decompresses, then compress again
            path.write_bytes(gzip.compress(_mutated_bytes(gzip.decompress(data), flips, cut), mtime=0))
        else:
            path.write_bytes(_mutated_bytes(data, flips, cut))
        _only_project_errors(load_mri, path)


@FUZZ
@given(
    field=st.sampled_from(NIFTI_FIELDS),
    value=st.one_of(odd_numbers, st.lists(odd_numbers, min_size=1, max_size=8)),
    use=st.sampled_from([None, "sform_code", "qform_code"]),
)
def test_nifti_reader_with_odd_header_fields(seeds, field, value, use):
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "t2.nii"
        header = nib.load(seeds["nii"]).header.copy()
        raw = bytearray(seeds["nii"].read_bytes())
        try:
            current = np.asarray(header[field])
            odd = np.resize(np.asarray(value, dtype=np.float64), current.shape)
            header[field] = odd.astype(current.dtype)
            if use is not None:  # make the reader use the mutated sform / qform
                header[use] = 1
        except (ValueError, OverflowError, TypeError):
            return  # not representable in this field's type
        raw[: len(header.binaryblock)] = header.binaryblock
        path.write_bytes(bytes(raw))
        _only_project_errors(load_mri, path)
