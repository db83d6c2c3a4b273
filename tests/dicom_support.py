"""Small valid inputs for the bad-input and fuzzing tests: a CT series and a NIfTI volume, each
built here in milliseconds, which the tests then break in one precise way."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: Values no output may ever contain (written into every header built here).
IDENTITY = {
    "PatientName": "MARKERNAME^PATIENT",
    "PatientID": "MARKERID4711",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "MARKERACC99",
    "InstitutionName": "Marker Hospital",
    "ReferringPhysicianName": "MARKERDOCTOR^REF",
    "StudyDate": "20010405",
}


def ct_dataset(instance_uid: str) -> Dataset:
    """An empty CT image object with its file meta (explicit VR little endian): what every CT file
    built for a test starts from."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = instance_uid
    return ds


def ct_slice(
    stored: np.ndarray, z_mm: float, series_uid: str, modality: str = "CT", rescale: bool = True
) -> Dataset:
    """One axial CT image at height ``z_mm`` (0.5 mm pixels, 5 mm thick) carrying IDENTITY."""
    ds = ct_dataset(generate_uid(entropy_srcs=[series_uid, str(z_mm)]))
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    for keyword, value in IDENTITY.items():
        setattr(ds, keyword, value)
    ds.Modality = modality
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = ["0", "0", f"{z_mm:g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.SliceThickness = "5"
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.set_pixel_data(np.ascontiguousarray(stored, dtype=np.int16), "MONOCHROME2", 16)
    return ds


def write_ct_series(
    folder: Path,
    n_slices: int = 4,
    size: int = 8,
    step_mm: float = 5.0,
    skip: tuple[int, ...] = (),
    series_uid: str | None = None,
    **slice_options,
) -> list[Path]:
    """A CT series of ``n_slices`` (files ``IM<k>.dcm``) with a bright square in soft tissue."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid(entropy_srcs=[str(folder)])
    stored = np.full((size, size), 1024 + 20, np.int16)
    stored[size // 4 : size // 2, size // 4 : size // 2] = 1024 + 80
    paths = []
    for k in range(n_slices):
        if k in skip:
            continue
        path = folder / f"IM{k:03d}.dcm"
        ct_slice(stored, k * step_mm, uid, **slice_options).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> Path:
    """A float32 NIfTI (default: a 12^3 blob on 2 mm voxels) whose text fields carry IDENTITY."""
    if data is None:
        grid = np.indices((12, 12, 12)).astype(np.float32) - 5.5
        data = np.exp(-(grid**2).sum(axis=0) / 20.0) * 500.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    image = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    image.header["descrip"] = IDENTITY["PatientName"].encode()
    image.header["aux_file"] = IDENTITY["PatientID"].encode()
    image.header["intent_name"] = IDENTITY["AccessionNumber"][:16].encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path
